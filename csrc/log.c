/*
 * log.c -- the log: a directory of segments, written and read by handles
 * in any number of processes that meet in the shared state (state.h).
 *
 * Handles.  An exclusive writer holds flock(LOCK_EX) on <dir>/.lock for
 * its life; shared writers (nginx workers) hold LOCK_SH, so they exclude
 * an exclusive writer and an in-place restore but not each other;
 * read-only handles take no .lock.  Every handle maps <dir>/.state.
 *
 * Writing.  Every change to the files -- append, roll, truncate, index
 * repair, copy-on-write, recovery -- happens under the state's mutex, in
 * every mode.  The holder first brings its view up to date with the
 * published layout (what other writers did: catch_up), writes, then
 * publishes the new layout.  A holder killed in between leaves the mutex
 * "owner died": the next locker repairs the log from its files, as an
 * open would, and publishes it under a new generation (repair_locked).
 *
 * Reading.  Before every lookup a handle compares the published layout
 * with its view (view_sync: a few memory loads).  The same: nothing to do.
 * The active segment grew: extend the view, loading the index entries
 * other writers added.  A new active segment: reload from the old one.  A
 * new generation (truncate, in-place restore, delete_before, a repair,
 * another writer's copy-on-write): reload everything.  A read-only handle
 * that could not map the state (an unwritable directory) follows the
 * files with stat(2) instead (refresh_private).
 *
 * Inside a process, two more locks, always taken before the state's mutex:
 *
 *   wmu  (mutex)   serializes this handle's writes and view updates.
 *   rw   (rwlock)  guards the segment array and each segment's published
 *                  fields (next, size, max_ts, ix, log_fd).  Readers hold it
 *                  shared for a whole lookup-and-pread; writers hold it
 *                  exclusive only to publish.
 *
 * An append writes its bytes with pwrite -- past the published size,
 * where no reader looks -- then takes rw exclusively to publish.  So reads
 * run alongside the expensive part of an append.
 *
 * Crash states.  Bytes reach the .log before the matching index entries
 * (.timeindex first, then .index), so after a crash the index files may
 * lag the .log but never lead it; recovery (recover_active) rescans from
 * the last index entry that checks out and truncates a torn tail.  Rolling
 * writes the old segment's seal trailer first, then the new segment's
 * index files, then its .log: a crash in between leaves an active segment
 * whose .timeindex carries a trailer, which the next open trims.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cursors.h"
#include "cut.h"
#include "error.h"
#include "fault.h"
#include "fs.h"
#include "lock.h"
#include "names.h"
#include "restore.h"
#include "segment.h"
#include "state.h"
#include "watch.h"
#include "sys.h"
#include "internal.h"

#define WRITE_CHUNK   (8u << 20)        /* frame at most this much per write */
#define ITER_CHUNK    (64u << 10)
#define TRIM_ABOVE    (1u << 20)        /* buffers larger than this are freed after use */
#define TK_RETRY      ((tk_code)101)    /* internal: the files moved under a reader */

struct tk_log {
    char *dir;
    tk_log_opts o;
    int lock_fd;                        /* .lock: LOCK_EX, LOCK_SH (shared) or -1 */
    tk_state st;
    uint64_t gen;                       /* the generation our view matches */
    pthread_mutex_t wmu;
    pthread_rwlock_t rw;
    tk_segment **segs;                  /* oldest first; last is active */
    size_t nsegs, cap;
    uint64_t vgen;                      /* bumped when positions may move (iterators) */
    int64_t start;                      /* log start offset: first readable */
    uint64_t sealed_bytes;              /* .log bytes of the sealed segments */
    tk_cursors cur;                     /* .cursors, mapped when first needed */
    tk_fdcache fds;
    unsigned char *wbuf;                /* writer's framing buffer */
    size_t wcap;
    /* sync = "interval": the engine thread that fdatasyncs */
    pthread_t syncer;
    int syncer_running, syncer_stop;
    pthread_mutex_t smu;
    pthread_cond_t scv;
    int sync_errno;                     /* a background fsync failed: the next call says so */
    unsigned pins;                      /* atomic: background jobs using this handle */
    tk_watch watch;                     /* on the active .log (watch.h) */
    int64_t own_res;                    /* under wmu: this handle's reservation, while it
                                           takes the lock to void the one before it */
    struct {                            /* under wmu: when the layout last matched the view
                                           for a reservation (reserve_locked) */
        uint64_t rgen, gen;
        int64_t base, start;
    } ok;
};

struct tk_iter {
    tk_log *log;
    int64_t next, end;
    uint64_t vgen;
    size_t si;
    uint64_t pos;
    int positioned;
    tk_window c;
};

static tk_code truncate_locked(tk_log *log, int64_t offset, tk_err *err);
static tk_code refresh_private(tk_log *log, tk_err *err);
static tk_code retention_locked(tk_log *log, size_t *deleted, tk_err *err);
static void evict_fds(tk_log *log);
static tk_code start_syncer(tk_log *log, tk_err *err);
static void stop_syncer(tk_log *log);

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

void tk_log_opts_init(tk_log_opts *o) {
    memset(o, 0, sizeof *o);
    o->max_segment_size = 64u << 20;
    o->index_interval_bytes = 4096;
    o->max_record_size = 16u << 20;
    o->sync = TK_SYNC_NONE;
    o->sync_interval_ms = 100;
    o->mode = TK_LOG_EXCLUSIVE;
    o->retention_max_age_ms = TK_NONE;
}

static tk_code check_opts(const char *dir, const tk_log_opts *o, tk_err *err) {
    if (o->max_segment_size < 1 || o->max_segment_size > TK_MAX_SEGMENT_SIZE_LIMIT)
        return tk_fail(err, TK_INVALID, "open_log %s: max_segment_size %" PRIu64
                       " is outside 1 .. %u", dir, o->max_segment_size,
                       TK_MAX_SEGMENT_SIZE_LIMIT);
    if (o->index_interval_bytes < 1)
        return tk_fail(err, TK_INVALID, "open_log %s: index_interval_bytes %u is outside "
                       "1 .. %u", dir, o->index_interval_bytes, UINT32_MAX);
    if (o->max_record_size < 64 || o->max_record_size > TK_MAX_RECORD_SIZE_LIMIT)
        return tk_fail(err, TK_INVALID, "open_log %s: max_record_size %u is outside 64 .. %u",
                       dir, o->max_record_size, TK_MAX_RECORD_SIZE_LIMIT);
    if (o->sync != TK_SYNC_NONE && o->sync != TK_SYNC_ALWAYS && o->sync != TK_SYNC_INTERVAL)
        return tk_fail(err, TK_INVALID, "open_log %s: bad sync mode", dir);
    if (o->sync == TK_SYNC_INTERVAL && (o->sync_interval_ms < 1 || o->sync_interval_ms > 3600000))
        return tk_fail(err, TK_INVALID, "open_log %s: sync_interval %u ms is outside 1 .. 3600000",
                       dir, o->sync_interval_ms);
    if (o->mode != TK_LOG_EXCLUSIVE && o->mode != TK_LOG_SHARED && o->mode != TK_LOG_READONLY)
        return tk_fail(err, TK_INVALID, "open_log %s: bad mode", dir);
    if (o->retention_max_age_ms != TK_NONE && o->retention_max_age_ms < 0)
        return tk_fail(err, TK_INVALID, "open_log %s: retention max_age must be >= 0", dir);
    if (o->retention_discard_new && !o->retention_max_bytes)
        return tk_fail(err, TK_INVALID, "open_log %s: retention discard = \"new\" needs "
                       "max_bytes", dir);
    return TK_OK;
}

/* Sealed segments keeping their .log open: a quarter of the descriptors
 * the process may have, at most 64, at least 4 -- so a worker that rolls
 * through thousands of segments never starves its sockets. */
static unsigned default_max_open(void) {
    struct rlimit rl;
    rlim_t v = 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur / 4 < v)
        v = rl.rlim_cur / 4;
    return v < 4 ? 4 : (unsigned)v;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int is_writer(const tk_log *log) { return log->o.mode != TK_LOG_READONLY; }
/* Counts a failed call by its code (tk_log_stats). */
static tk_code counted(tk_log *log, tk_code rc) {
    if (rc != TK_OK && (unsigned)rc < TK_CODE_COUNT) tk_state_count(&log->st, TK_C_ERROR0 + rc, 1);
    return rc;
}

/* The appends of this handle are fsynced before they return. */
static int durable(const tk_log *log) { return log->o.sync == TK_SYNC_ALWAYS; }
/* This handle's records must reach the disk: at once, or within an interval. */
static int keeps_durable(const tk_log *log) {
    return is_writer(log) && log->o.sync != TK_SYNC_NONE;
}

/* ------------------------------------------------------------------ */
/* The segment array                                                    */
/* ------------------------------------------------------------------ */

static tk_segment *active(const tk_log *log) { return log->segs[log->nsegs - 1]; }

static int push_segment(tk_log *log, tk_segment *s) {
    if (log->nsegs == log->cap) {
        size_t cap = log->cap ? log->cap * 2 : 16;
        tk_segment **p = tk_realloc(log->segs, cap * sizeof *p);
        if (!p) return -1;
        log->segs = p;
        log->cap = cap;
    }
    log->segs[log->nsegs++] = s;
    return 0;
}

static void drop_segments_from(tk_log *log, size_t k) {
    while (log->nsegs > k) tk_seg_free(log->segs[--log->nsegs]);
    log->vgen++;
}

/* Index of the segment holding offset (base <= offset < hwm). */
static size_t find_segment(const tk_log *log, int64_t offset) {
    size_t lo = 0, hi = log->nsegs;     /* first segment with base > offset */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (log->segs[mid]->base <= offset) lo = mid + 1; else hi = mid;
    }
    return lo ? lo - 1 : 0;
}

static int64_t hwm_locked(const tk_log *log) { return active(log)->next; }
static int64_t base_locked(const tk_log *log) { return log->start; }

/* The layout this view describes (what a writer publishes). */
static void view_layout(const tk_log *log, tk_layout *l) {
    const tk_segment *a = active(log);
    l->gen = log->gen;
    l->start = log->start;
    l->active_base = a->base;
    l->next = a->next;
    l->size = a->size;
    l->idx_n = a->idx_n;
    l->since = a->ws.since;
    l->max_ts = a->max_ts;
    l->log_crc = a->log_crc;
    l->idx_crc = a->idx_crc;
    l->tim_crc = a->tim_crc;
    l->flags = (a->crc_known ? TK_LAYOUT_CRC : 0) |
               (a->icrc_known && a->idx_size == a->idx_n * TK_OIDX_ENTRY &&
                a->tim_size == a->idx_n * TK_TIDX_ENTRY ? TK_LAYOUT_ICRC : 0) |
               (is_writer(log) ? TK_LAYOUT_CHECKED : 0);
}

/* The active segment takes what a layout says of it. */
static void adopt_counts(tk_segment *s, const tk_layout *l) {
    s->size = l->size;
    s->next = s->held = l->next;
    s->max_ts = l->max_ts;
    s->ws.since = l->since;
    s->ws.max_ts = l->max_ts;
    s->idx_n = l->idx_n;
    if (s->ix.n > l->idx_n) tk_index_truncate(&s->ix, (size_t)l->idx_n);
    s->log_crc = l->log_crc;
    s->crc_known = (l->flags & TK_LAYOUT_CRC) != 0;
    s->idx_crc = l->idx_crc;
    s->tim_crc = l->tim_crc;
    s->idx_size = l->idx_n * TK_OIDX_ENTRY;
    s->tim_size = l->idx_n * TK_TIDX_ENTRY;
    s->icrc_known = (l->flags & TK_LAYOUT_ICRC) != 0;
}

/* ------------------------------------------------------------------ */
/* Loading: listing, sealed segments, the active one                    */
/* ------------------------------------------------------------------ */

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Collects the base offsets of all .log files, sorted.  With clean, also
 * removes what a crash can leave behind: temp files of an atomic replace
 * or a copy-on-write, and an in-place restore that never committed. */
static tk_code list_bases(tk_log *log, int clean, int64_t **out, size_t *count, tk_err *err) {
    DIR *d = opendir(log->dir);
    struct dirent *de;
    int64_t *bases = NULL, base;
    size_t n = 0, cap = 0;
    tk_ext ext;
    if (!d) return tk_fail_errno(err, errno, "open %s", log->dir);
    while ((de = readdir(d)) != NULL) {
        if (clean && tk_is_log_leftover(de->d_name)) {
            char path[PATH_MAX];
            if (tk_path_join(path, sizeof path, log->dir, de->d_name) == 0) tk_rmtree(path);
            continue;
        }
        if (!tk_parse_seg_name(de->d_name, &base, &ext) || ext != TK_EXT_LOG) continue;
        if (n == cap) {
            int64_t *p = tk_realloc(bases, (cap = cap ? cap * 2 : 64) * sizeof *p);
            if (!p) {
                free(bases);
                closedir(d);
                return tk_fail(err, TK_NOMEM, "open %s: out of memory", log->dir);
            }
            bases = p;
        }
        bases[n++] = base;
    }
    closedir(d);
    if (n) qsort(bases, n, sizeof *bases, cmp_i64);
    *out = bases;
    *count = n;
    return TK_OK;
}

/* Index files whose .log is gone (a crash while a segment was made or
 * removed). */
static void remove_orphan_indexes(tk_log *log, const int64_t *bases, size_t n) {
    DIR *d = opendir(log->dir);
    struct dirent *de;
    int64_t base;
    tk_ext ext;
    if (!d) return;
    while ((de = readdir(d)) != NULL) {
        if (!tk_parse_seg_name(de->d_name, &base, &ext) || ext == TK_EXT_LOG) continue;
        if (!bsearch(&base, bases, n, sizeof *bases, cmp_i64)) unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

static tk_code stat_log(const tk_log *log, const tk_segment *s, uint64_t *size, tk_err *err) {
    char path[PATH_MAX];
    struct stat st;
    if (tk_seg_path(path, sizeof path, log->dir, s->base, TK_EXT_LOG) < 0 || stat(path, &st) < 0)
        return tk_fail_errno(err, errno, "stat %s", path);
    *size = (uint64_t)st.st_size;
    return TK_OK;
}

/* A sealed segment: its index files, rebuilt from the .log when they do
 * not check out (rewritten too when fix: a writer under the lock). */
static tk_code load_sealed(tk_log *log, tk_segment *s, int fix, tk_err *err) {
    uint64_t size;
    int whole;
    tk_code rc = stat_log(log, s, &size, err);
    if (rc != TK_OK) return rc;
    s->size = size;
    if ((rc = tk_seg_load_index(log->dir, s, size, 1, &whole, err)) != TK_OK) return rc;
    if (whole) return TK_OK;
    if ((rc = tk_seg_rebuild(log->dir, s, log->o.index_interval_bytes, size, 0, err)) != TK_OK)
        return rc;
    if (!fix) return TK_OK;
    return tk_seg_write_index(log->dir, s, 1, durable(log), err);
}

/* Drops trailing index entries until the last one leads to an intact
 * record with the expected offset and a plausible timestamp. */
static tk_code verify_last_entry(tk_log *log, tk_segment *s, tk_window *c, uint64_t end,
                                 tk_err *err) {
    while (s->ix.n > 0) {
        const tk_ientry *e = &s->ix.e[s->ix.n - 1];
        const unsigned char *p;
        tk_rec_hdr h;
        tk_err scratch;
        tk_code rc = tk_seg_read_at(log->dir, s, c, e->pos, s->base + e->rel, end, &h, &p,
                                    &scratch);
        if (rc == TK_OK && h.timestamp <= e->max_ts) return TK_OK;
        if (rc != TK_OK && rc != TK_CORRUPT) return tk_fail_pass(err, &scratch);
        s->ix.n--;
    }
    return TK_OK;
}

/* Recovery of the active segment from its files (docs/FORMAT.md): the
 * tail is validated from the last index entry that checks out; a writer
 * cuts a torn tail and rewrites index files that did not match. */
static tk_code recover_active(tk_log *log, tk_segment *s, int writer, tk_err *err) {
    tk_window c = { .chunk = ITER_CHUNK };
    uint64_t size, pos;
    int whole;
    size_t loaded, kept;
    tk_idxstate st = { 0, TK_TS_NONE };
    tk_code rc;

    if (!writer) {
        char path[PATH_MAX];
        struct stat sb;
        tk_seg_path(path, sizeof path, log->dir, s->base, TK_EXT_LOG);
        if (stat(path, &sb) < 0 && errno == ENOENT) return TK_OK;   /* not created yet */
    } else if ((rc = tk_seg_open_writable(log->dir, s, err)) != TK_OK) {
        return rc;
    }
    if ((rc = stat_log(log, s, &size, err)) != TK_OK) return rc;
    if ((rc = tk_seg_load_index(log->dir, s, size, 0, &whole, err)) != TK_OK) return rc;
    loaded = s->ix.n;
    if ((rc = verify_last_entry(log, s, &c, size, err)) != TK_OK) goto out;
    kept = s->ix.n;
    if (s->ix.n > 0) {
        const tk_ientry *e = &s->ix.e[s->ix.n - 1];
        pos = e->pos;
        s->next = s->base + e->rel;
        st.max_ts = e->max_ts;
    } else {
        pos = 0;
        s->next = s->base;
    }
    rc = tk_seg_scan(log->dir, s, &c, &pos, &s->next, &st, log->o.index_interval_bytes,
                     size, 1, err);
    if (rc != TK_OK) goto out;
    s->size = pos;
    s->held = s->next;
    s->ws = st;
    s->max_ts = st.max_ts;
    s->idx_n = s->ix.n;
    if (!writer) goto out;
    if (pos < size) {                                   /* torn or garbage tail */
        if ((rc = tk_seg_unshare(log->dir, s, 1u << TK_EXT_LOG, durable(log), err)) != TK_OK)
            goto out;
        if (tk_ftruncate(s->log_fd, (off_t)pos) < 0) {
            rc = tk_fail_errno(err, errno, "truncate " TK_SEG_LOG_FMT, log->dir, s->base);
            goto out;
        }
    }
    /* The files must hold exactly the entries in memory: other handles
     * load them, and other writers append after them. */
    if (!whole || kept != loaded || s->ix.n != kept)
        rc = tk_seg_write_index(log->dir, s, 0, durable(log), err);
out:
    tk_window_free(&c);
    return rc;
}

/* The active segment as a published layout describes it.  A writer cuts
 * whatever lies beyond (what a writer that died under the lock wrote and
 * never published: no one was told of it). */
static tk_code adopt_active(tk_log *log, tk_segment *s, const tk_layout *l, int writer,
                            tk_err *err) {
    uint64_t size;
    int whole;
    tk_code rc;
    if (writer && (rc = tk_seg_open_writable(log->dir, s, err)) != TK_OK) return rc;
    if ((rc = stat_log(log, s, &size, err)) != TK_OK) return rc == TK_NOT_FOUND ? TK_RETRY : rc;
    if (size < l->size) return writer ? tk_fail(err, TK_CORRUPT, "open %s: %020" PRId64
                                                 ".log is shorter than the log's state says",
                                                 log->dir, s->base) : TK_RETRY;
    if ((rc = tk_seg_load_index(log->dir, s, l->size, 0, &whole, err)) != TK_OK) return rc;
    adopt_counts(s, l);
    if (!writer || size == l->size) return TK_OK;
    if ((rc = tk_seg_unshare(log->dir, s, TK_UNSHARE_ALL, durable(log), err)) != TK_OK) return rc;
    if (tk_ftruncate(s->log_fd, (off_t)l->size) < 0 ||
        tk_ftruncate(s->idx_fd, (off_t)(l->idx_n * TK_OIDX_ENTRY)) < 0 ||
        tk_ftruncate(s->tim_fd, (off_t)(l->idx_n * TK_TIDX_ENTRY)) < 0)
        return tk_fail_errno(err, errno, "truncate " TK_SEG_LOG_FMT, log->dir, s->base);
    return TK_OK;
}

/* Loads the listed segments whose base is >= from: sealed ones as they
 * are, the active one by recovery (l NULL) or as l says.  With l, a .log
 * newer than l's active segment is not published yet and ignored. */
static tk_code load_listed(tk_log *log, const int64_t *bases, size_t n, int64_t from,
                           const tk_layout *l, int writer, tk_err *err) {
    tk_code rc = TK_OK;
    size_t last = n;
    while (l && last > 0 && bases[last - 1] > l->active_base) last--;
    if (l && (last == 0 || bases[last - 1] != l->active_base)) return TK_RETRY;
    for (size_t i = 0; i < last && rc == TK_OK; i++) {
        tk_segment *s;
        if (bases[i] < from) continue;
        /* Wholly below the published start: retention may be removing
         * its files this moment, and no read may reach it. */
        if (l && i + 1 < last && bases[i + 1] <= l->start) continue;
        if (!(s = tk_seg_new(bases[i], &log->fds)) || push_segment(log, s) < 0) {
            tk_seg_free(s);
            return tk_fail(err, TK_NOMEM, "open %s: out of memory", log->dir);
        }
        if (i + 1 < last) {
            s->next = bases[i + 1];
            rc = load_sealed(log, s, writer, err);
            if (rc == TK_NOT_FOUND) rc = TK_RETRY;      /* removed since the listing */
        } else {
            rc = l ? adopt_active(log, s, l, writer, err) : recover_active(log, s, writer, err);
        }
    }
    return rc;
}

/* The log start offset delete_before persisted (docs/FORMAT.md), or
 * TK_NONE. */
static int64_t read_start(const tk_log *log) {
    char path[PATH_MAX], buf[32], *end;
    int64_t v = TK_NONE;
    FILE *f;
    if (tk_path_join(path, sizeof path, log->dir, TK_START_FILE) < 0 || !(f = fopen(path, "r")))
        return TK_NONE;
    if (fgets(buf, sizeof buf, f)) {
        long long x = strtoll(buf, &end, 10);
        if (end != buf && (*end == '\n' || *end == '\0') && x >= 0) v = x;
    }
    fclose(f);
    return v;
}

static void remove_segment_files(const tk_log *log, int64_t base);

/* After the segments are loaded: the start offset -- the layout's, or the
 * one .start keeps, never below the first segment nor past the end -- and
 * the bytes of the sealed segments.  Segments wholly below the start are
 * dropped from the view; with remove (a writer loading from the files,
 * under the lock) their files are removed too: what a retention pass
 * that was killed left behind. */
static void settle_view(tk_log *log, const tk_layout *l, int remove) {
    int64_t first = log->segs[0]->base, hwm = hwm_locked(log);
    int64_t start = l ? l->start : read_start(log);
    size_t k = 0;
    if (start < first) start = first;
    if (start > hwm) start = hwm;
    while (k + 1 < log->nsegs && log->segs[k]->next <= start) {
        if (remove) remove_segment_files(log, log->segs[k]->base);
        tk_seg_free(log->segs[k++]);
    }
    if (k > 0) {
        memmove(log->segs, log->segs + k, (log->nsegs - k) * sizeof *log->segs);
        log->nsegs -= k;
        if (remove && durable(log)) tk_fsync_dir(log->dir);
    }
    if (remove && start == log->segs[0]->base && start > 0) {
        char path[PATH_MAX];
        if (tk_path_join(path, sizeof path, log->dir, TK_START_FILE) == 0) unlink(path);
    }
    log->start = start;
    log->sealed_bytes = 0;
    for (size_t i = 0; i + 1 < log->nsegs; i++) log->sealed_bytes += log->segs[i]->size;
}

/* The whole view from the files: by recovery (l NULL: the first opener,
 * or a repair) or as the layout l says. */
static tk_code load_view(tk_log *log, const tk_layout *l, int writer, tk_err *err) {
    int64_t *bases = NULL;
    size_t n = 0;
    tk_code rc;
    drop_segments_from(log, 0);
    if ((rc = list_bases(log, writer && !l, &bases, &n, err)) != TK_OK) return rc;
    if (writer && !l) remove_orphan_indexes(log, bases, n);
    if (n == 0) {
        tk_segment *s = NULL;
        free(bases);
        if (l && l->next != l->active_base) return TK_RETRY;
        if (!writer) s = tk_seg_new(l ? l->active_base : 0, &log->fds);
        else if ((rc = tk_seg_create(log->dir, l ? l->active_base : 0, durable(log), &log->fds,
                                     &s, err)) != TK_OK)
            return rc;
        if (!s || push_segment(log, s) < 0) {
            tk_seg_free(s);
            return tk_fail(err, TK_NOMEM, "open %s: out of memory", log->dir);
        }
        settle_view(log, l, 0);
        return TK_OK;
    }
    rc = load_listed(log, bases, n, INT64_MIN, l, writer, err);
    free(bases);
    if (rc == TK_OK && log->nsegs == 0) rc = TK_RETRY;
    if (rc == TK_OK) settle_view(log, l, writer && !l);
    return rc;
}

/* Drops the segments from index k on and loads them again (another
 * writer rolled: our active segment is sealed now). */
static tk_code reload_from(tk_log *log, size_t k, const tk_layout *l, int writer, tk_err *err) {
    int64_t *bases = NULL, from = log->segs[k]->base;
    size_t n = 0;
    tk_code rc;
    if (k == 0) return load_view(log, l, writer, err);
    drop_segments_from(log, k);
    if ((rc = list_bases(log, 0, &bases, &n, err)) != TK_OK) return rc;
    rc = load_listed(log, bases, n, from, l, writer, err);
    free(bases);
    if (rc == TK_OK && log->nsegs == k) rc = TK_RETRY;
    if (rc == TK_OK) settle_view(log, l, 0);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Following the published layout                                       */
/* ------------------------------------------------------------------ */

/* The log start moved (delete_before, retention): forget the segments
 * wholly below it.  Caller holds rw exclusively. */
static void drop_below(tk_log *log, int64_t start) {
    size_t k = 0;
    while (k + 1 < log->nsegs && log->segs[k]->next <= start) {
        log->sealed_bytes -= log->segs[k]->size;
        tk_seg_free(log->segs[k++]);
    }
    if (k > 0) {
        memmove(log->segs, log->segs + k, (log->nsegs - k) * sizeof *log->segs);
        log->nsegs -= k;
        log->vgen++;
    }
    if (start > log->start) log->start = start;
}

/* Brings the view to what l describes.  Caller holds wmu (and, when it is
 * a writer about to write, the state's lock); takes rw itself. */
static tk_code catch_up(tk_log *log, const tk_layout *l, int writer, tk_err *err) {
    tk_segment *a = log->nsegs ? active(log) : NULL;
    tk_code rc = TK_OK;
    if (a && l->gen == log->gen && l->active_base == a->base && l->next == a->next &&
        l->size == a->size && l->start == log->start)
        return TK_OK;
    pthread_rwlock_wrlock(&log->rw);
    if (a && l->gen == log->gen && l->start > log->start) drop_below(log, l->start);
    if (!a || l->gen != log->gen) {
        tk_cursors_close(&log->cur);        /* a restore may have replaced it */
        rc = load_view(log, l, writer, err);
    } else if (l->active_base != a->base) {
        rc = reload_from(log, log->nsegs - 1, l, writer, err);
    } else {
        adopt_counts(a, l);
        if (writer) rc = tk_seg_open_writable(log->dir, a, err);
    }
    if (rc == TK_OK) log->gen = l->gen;
    else log->gen = 0;                  /* the view is unusable: reload next time */
    pthread_rwlock_unlock(&log->rw);
    return rc;
}

/* The files as they are, after a holder of the state's lock died (or the
 * layout was marked stale, or built by a reader): load the view as the
 * first opener would and publish it.  Caller holds wmu and the lock. */
static tk_code repair_locked(tk_log *log, tk_err *err) {
    tk_layout l;
    tk_code rc;
    pthread_rwlock_wrlock(&log->rw);
    rc = load_view(log, NULL, is_writer(log), err);
    if (rc == TK_OK) {
        view_layout(log, &l);
        tk_state_repaired(&log->st, &l, 1);
        log->gen = l.gen;
    } else {
        tk_state_copy(&log->st, &l);
        tk_state_repaired(&log->st, &l, 0);
        log->gen = 0;
    }
    pthread_rwlock_unlock(&log->rw);
    return rc;
}

/* Cuts the active segment's files (by name: this handle's view may be
 * behind) back to pos bytes and idx_n index entries, where voided shared
 * appends began.  Caller holds the lock. */
static tk_code cut_voided(tk_log *log, uint64_t pos, uint64_t idx_n, tk_err *err) {
    static const uint64_t unit[TK_EXT_COUNT] = { 1, TK_OIDX_ENTRY, TK_TIDX_ENTRY };
    tk_layout l;
    tk_code rc = TK_OK;
    tk_state_copy(&log->st, &l);
    for (int i = 0; i < TK_EXT_COUNT && rc == TK_OK; i++) {
        char path[PATH_MAX];
        uint64_t to = (i == TK_EXT_LOG ? pos : idx_n) * unit[i];
        struct stat sb;
        int fd;
        if (tk_seg_path(path, sizeof path, log->dir, l.active_base, (tk_ext)i) < 0 ||
            (fd = tk_open(path, O_WRONLY | O_CLOEXEC, 0)) < 0) {
            if (errno == ENOENT && i != TK_EXT_LOG) continue;
            return tk_fail_errno(err, errno, "append to %s: cut what voided appends wrote", path);
        }
        if (fstat(fd, &sb) == 0 && (uint64_t)sb.st_size > to && tk_ftruncate(fd, (off_t)to) < 0)
            rc = tk_fail_errno(err, errno, "append to %s: cut what voided appends wrote", path);
        close(fd);
    }
    return rc;
}

/* Waits for the shared appends under way to publish (caller holds the
 * lock, so no new one starts): every change to the files under the lock
 * sees them as published.  One that never will -- its process died, or
 * its write failed -- is voided with every one after it: their makers
 * append again (or report the failure), and the files are cut back to
 * where it began.  (A maker that died inside the seqlock left it odd:
 * writer_locked rebuilds the layout from the cut files.) */
static void drain_locked(tk_log *log) {
    uint64_t pos, idx_n;
    while (tk_state_drain(&log->st, log->own_res, &pos, &idx_n)) {
        tk_err scratch;
        tk_state_void(&log->st);
        /* Not cut: the next appender cuts the .log past its published
         * end (the torn flag); index entries past the published count
         * are written over. */
        if (cut_voided(log, pos, idx_n, &scratch) != TK_OK) tk_state_set_torn(&log->st, 1);
        tk_state_voided(&log->st);
    }
}

/* The rest of writer_enter once the lock is taken: drain the shared
 * appends, then bring the view up to date (or rebuild it).  Unlocks on
 * failure. */
static tk_code writer_locked(tk_log *log, int repair, tk_err *err) {
    tk_layout l;
    tk_code rc = TK_OK;
    drain_locked(log);
    if (tk_state_seq_odd(&log->st)) repair = 1;     /* a holder died publishing */
    tk_state_copy(&log->st, &l);
    if (repair || (is_writer(log) && !(l.flags & TK_LAYOUT_CHECKED)))
        rc = repair_locked(log, err);
    else
        rc = catch_up(log, &l, is_writer(log), err);
    /* Under the lock the files match the layout unless something outside
     * takhin changed them: then they decide, as for a dead writer. */
    if (rc == TK_RETRY) rc = repair_locked(log, err);
    if (rc == TK_RETRY) rc = tk_fail(err, TK_IO, "open %s: the segment files keep changing", log->dir);
    if (rc != TK_OK) tk_state_unlock(&log->st);
    return rc;
}

/* Takes the state's lock for a change to the files and brings the view up
 * to date.  Caller holds wmu. */
static tk_code writer_enter(tk_log *log, tk_err *err) {
    int repair;
    tk_code rc = tk_state_lock(&log->st, log->dir, &repair, err);
    return rc == TK_OK ? writer_locked(log, repair, err) : rc;
}

static void writer_leave(tk_log *log) { tk_state_unlock(&log->st); }

/* Publishes the view (caller holds the lock). */
static void publish(tk_log *log) {
    tk_layout l;
    view_layout(log, &l);
    tk_state_publish(&log->st, &l);
}

/* Around a change that removes or replaces files under their names: every
 * other handle reloads when it sees the new generation. */
static void change_begin(tk_log *log) {
    tk_layout l;
    view_layout(log, &l);
    tk_state_begin_change(&log->st, &l);
    log->gen = l.gen;
}

static void change_end(tk_log *log) {
    tk_layout l;
    view_layout(log, &l);
    tk_state_end_change(&log->st, &l);
    log->gen = l.gen;
}

/* Loads the index entries other writers added to the active segment, so
 * lookups do not scan from the last entry we knew.  Caller holds wmu. */
static void load_index_tail(tk_log *log) {
    tk_segment *a = active(log);
    tk_err scratch;
    if (a->ix.n >= a->idx_n) return;
    pthread_rwlock_wrlock(&log->rw);
    tk_seg_load_index_tail(log->dir, a, a->idx_n, &scratch);   /* a lag only lengthens scans */
    pthread_rwlock_unlock(&log->rw);
}

/* The view matches the layout: nothing to do (a lookup still wants the
 * index entries other writers added, see load_index_tail). */
static int view_current(const tk_log *log, const tk_layout *l) {
    const tk_segment *a = log->nsegs ? active(log) : NULL;
    return a && l->gen == log->gen && l->active_base == a->base && l->next == a->next &&
           l->start == log->start && a->ix.n >= a->idx_n;
}

tk_code tk_log_refresh(tk_log *log, tk_err *err) {
    tk_layout l;
    tk_code rc = TK_OK;
    if (log->st.is_private) return refresh_private(log, err);
    if (tk_state_try_read(&log->st, &l)) {
        int current;
        pthread_rwlock_rdlock(&log->rw);
        current = view_current(log, &l);
        pthread_rwlock_unlock(&log->rw);
        if (current) return TK_OK;
    }
    pthread_mutex_lock(&log->wmu);
    for (int tries = 0;; tries++) {
        /* A writer's view holds writable descriptors and may cut what a
         * dead writer left: only under the lock.  A reader takes the lock
         * only to wait out a truncate or restore (odd generation) or to
         * repair. */
        if (is_writer(log) || !tk_state_try_read(&log->st, &l) || (l.gen & 1)) {
            if ((rc = writer_enter(log, err)) == TK_OK) writer_leave(log);
        } else {
            rc = catch_up(log, &l, 0, err);
        }
        if (rc != TK_RETRY) break;
        if (tries > 100) {
            rc = tk_fail(err, TK_IO, "refresh %s: the files keep changing under the reader",
                         log->dir);
            break;
        }
    }
    if (rc == TK_OK) load_index_tail(log);
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Opening and closing                                                  */
/* ------------------------------------------------------------------ */

/* A committed in-place restore that a crash interrupted: the first writer
 * to open finishes it.  A shared writer needs the directory to itself for
 * that moment (others would be reading files that move). */
static tk_code finish_restore(tk_log *log, tk_err *err) {
    tk_code rc = TK_OK;
    for (int tries = 0; rc == TK_OK && tk_restore_pending(log->dir); tries++) {
        int got = 1;
        if (log->o.mode == TK_LOG_SHARED &&
            (rc = tk_lockfd_upgrade(log->lock_fd, log->dir, &got, err)) != TK_OK)
            break;
        if (got) rc = tk_restore_apply(log->dir, err);
        if (log->o.mode == TK_LOG_SHARED && got) {
            tk_code r2 = tk_lockfd_share(log->lock_fd, log->dir, err);
            if (rc == TK_OK) rc = r2;
        }
        if (!got) {
            if (tries > 5000)
                return tk_fail(err, TK_LOCKED, "open %s: an interrupted in-place restore "
                               "waits for the other writers to close", log->dir);
            usleep(1000);
        }
    }
    return rc;
}

static tk_code prepare_dir(tk_log *log, tk_err *err) {
    struct stat st;
    tk_code rc;
    if (is_writer(log) && tk_mkdir_p(log->dir, 0755) < 0)
        return tk_fail_errno(err, errno, "create %s", log->dir);
    if (stat(log->dir, &st) < 0) return tk_fail_errno(err, errno, "open %s", log->dir);
    if (!S_ISDIR(st.st_mode))
        return tk_fail(err, TK_INVALID, "open %s: not a directory", log->dir);
    if (!is_writer(log)) {
        if (tk_restore_pending(log->dir))
            return tk_fail(err, TK_LOCKED, "open %s: an in-place restore is in progress; "
                           "open it as a writer to finish it", log->dir);
        return TK_OK;
    }
    rc = log->o.mode == TK_LOG_SHARED
         ? tk_dirlock_try_shared(log->dir, TK_LOCK_FILE, &log->lock_fd, err)
         : tk_dirlock_try(log->dir, TK_LOCK_FILE, &log->lock_fd, err);
    return rc == TK_OK ? finish_restore(log, err) : rc;
}

/* The first opener builds the view by recovery and publishes it; the
 * others adopt what is published (a writer checking it first when no
 * writer has since the state was built). */
/* 1 when dir holds a segment's .log or the state file: a log. */
static int holds_log(const tk_log *log) {
    DIR *d = opendir(log->dir);
    struct dirent *de;
    tk_ext ext;
    int found = 0;
    if (!d) return 0;
    while (!found && (de = readdir(d)) != NULL)
        found = strcmp(de->d_name, TK_STATE_FILE) == 0 ||
                (tk_parse_seg_name(de->d_name, NULL, &ext) && ext == TK_EXT_LOG);
    closedir(d);
    return found;
}

static tk_code join_state(tk_log *log, tk_err *err) {
    tk_code rc;
    rc = is_writer(log) || holds_log(log) ? tk_state_open(log->dir, &log->st, err)
                                          : tk_state_open_private(&log->st, err);
    if (rc == TK_NOMEM) return tk_fail_prefix(err, rc, "open %s", log->dir);
    if (rc != TK_OK) return rc;
    if (log->st.is_private && is_writer(log))
        return tk_fail(err, TK_IO, "open %s: cannot create %s/" TK_STATE_FILE, log->dir, log->dir);
    if (log->st.created) {
        tk_layout l;
        if ((rc = load_view(log, NULL, is_writer(log), err)) != TK_OK) return rc;
        view_layout(log, &l);
        tk_state_ready(&log->st, &l);
        log->gen = l.gen;
        return TK_OK;
    }
    log->gen = 0;                       /* no view yet: the first sync loads it */
    if (is_writer(log)) {
        pthread_mutex_lock(&log->wmu);
        rc = writer_enter(log, err);
        if (rc == TK_OK) writer_leave(log);
        pthread_mutex_unlock(&log->wmu);
        return rc;
    }
    /* An empty view to start from: refresh loads the real one. */
    {
        tk_segment *s = tk_seg_new(0, &log->fds);
        if (!s || push_segment(log, s) < 0) {
            tk_seg_free(s);
            return tk_fail(err, TK_NOMEM, "open %s: out of memory", log->dir);
        }
    }
    return tk_log_refresh(log, err);
}

tk_code tk_log_open(const char *dir, const tk_log_opts *opts, tk_log **out, tk_err *err) {
    tk_log_opts defaults;
    tk_log *log;
    tk_code rc;
    size_t len;

    *out = NULL;
    if (!opts) { tk_log_opts_init(&defaults); opts = &defaults; }
    if (!dir || !*dir) return tk_fail(err, TK_INVALID, "open_log: empty directory name");
    if ((rc = check_opts(dir, opts, err)) != TK_OK) return rc;
    if (!(log = tk_calloc(1, sizeof *log)))
        return tk_fail(err, TK_NOMEM, "open %s: out of memory", dir);
    log->o = *opts;
    log->lock_fd = -1;
    log->st.fd = -1;
    log->st.slot = -1;
    log->cur.fd = -1;
    log->watch.wd = -1;
    log->own_res = TK_NONE;
    log->fds.max = opts->max_open_segments ? opts->max_open_segments : default_max_open();
    pthread_mutex_init(&log->wmu, NULL);
    pthread_rwlock_init(&log->rw, NULL);
    len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;       /* "a/b/" -> "a/b" */
    if (!(log->dir = tk_strndup(dir, len))) {
        tk_log_close(log);
        return tk_fail(err, TK_NOMEM, "open %s: out of memory", dir);
    }
    if ((rc = prepare_dir(log, err)) != TK_OK || (rc = join_state(log, err)) != TK_OK) {
        tk_log_close(log);
        return rc;
    }
    if (log->o.mode == TK_LOG_SHARED) tk_state_add_writer(&log->st);
    if (keeps_durable(log)) tk_state_durable_writer(&log->st, 1);
    if (keeps_durable(log) && log->o.sync == TK_SYNC_INTERVAL && (rc = start_syncer(log, err)) != TK_OK) {
        tk_log_close(log);
        return rc;
    }
    *out = log;
    return TK_OK;
}

void tk_log_close(tk_log *log) {
    if (!log) return;
    stop_syncer(log);
    tk_watch_disarm(&log->watch);
    if (keeps_durable(log) && log->st.sh) tk_state_durable_writer(&log->st, -1);
    drop_segments_from(log, 0);
    free(log->segs);
    tk_cursors_close(&log->cur);
    tk_state_close(&log->st);
    tk_dirlock_release(log->lock_fd);
    pthread_rwlock_destroy(&log->rw);
    pthread_mutex_destroy(&log->wmu);
    free(log->wbuf);
    free(log->dir);
    free(log);
}

/* ------------------------------------------------------------------ */
/* Appending                                                            */
/* ------------------------------------------------------------------ */

/* Whether the active .log must be looked at (fstat) before this append:
 * when it is not watched yet (a new segment or inode: arm the watch first,
 * then look, so that a link made after the look fires the watch), when the
 * watch fired (its link count or other attributes changed), when no watch
 * can be had, or when a failed append may have left bytes past its end.
 * Otherwise an append is one pwrite.  Caller holds the lock. */
static int log_needs_check(tk_log *log, tk_segment *s) {
    char path[PATH_MAX];
    if (tk_state_torn(&log->st)) return 1;
    if (tk_watch_armed(&log->watch, s->serial)) return tk_watch_take(&log->watch);
    if (tk_seg_path(path, sizeof path, log->dir, s->base, TK_EXT_LOG) == 0)
        tk_watch_arm(&log->watch, path, s->serial);
    return 1;
}

/* Hard-link safety (docs/FORMAT.md): no file with another link is written
 * in place.  The .log is checked when it becomes the one appended to and
 * whenever its inotify watch says its attributes changed (watch.h: that
 * is how a link another program makes is noticed without an fstat per
 * append), and the index files before entries are written to them
 * (tk_seg_unshare). */
static tk_code unshare_active(tk_log *log, unsigned which, tk_err *err) {
    tk_segment *s = active(log);
    tk_code rc;
    int shared = 0;
    if ((which & (1u << TK_EXT_LOG)) && log_needs_check(log, s)) {
        /* The same fstat tells whether a failed append whose undo failed
         * too (ftruncate refused) left bytes past the published end: cut
         * them first, or a record of that append could outlive a shorter
         * one written over its start, and come back at the next open. */
        struct stat st;
        if (fstat(s->log_fd, &st) < 0) {
            tk_watch_disarm(&log->watch);               /* look again next time */
            return tk_fail_errno(err, errno, "append to " TK_SEG_LOG_FMT, log->dir, s->base);
        }
        if (st.st_nlink > 1) shared = 1;
        if ((uint64_t)st.st_size > s->size && tk_ftruncate(s->log_fd, (off_t)s->size) < 0) {
            tk_watch_disarm(&log->watch);
            return tk_fail_errno(err, errno, "append to %s/%020" PRId64 ".log: cut the %" PRIu64
                                 " bytes a failed append left past its end", log->dir, s->base,
                                 (uint64_t)st.st_size - s->size);
        }
        tk_state_set_torn(&log->st, 0);
    }
    if ((which & (1u << TK_EXT_INDEX)) && tk_link_count(s->idx_fd) > 1) shared = 1;
    if ((which & (1u << TK_EXT_TIMEINDEX)) && tk_link_count(s->tim_fd) > 1) shared = 1;
    if (!shared) return TK_OK;
    /* Other handles hold descriptors of the linked inodes: make them
     * reopen the names (a new generation). */
    change_begin(log);
    pthread_rwlock_wrlock(&log->rw);
    rc = tk_seg_unshare(log->dir, s, which, durable(log), err);
    log->vgen++;
    pthread_rwlock_unlock(&log->rw);
    change_end(log);
    if (rc != TK_OK) tk_watch_disarm(&log->watch);     /* still linked: look again next time */
    return rc;
}

static void remove_segment_files(const tk_log *log, int64_t base) {
    char path[PATH_MAX];
    for (int i = 0; i < TK_EXT_COUNT; i++)  /* .log first: then the segment is gone */
        if (tk_seg_path(path, sizeof path, log->dir, base, (tk_ext)i) == 0) unlink(path);
}

/* Seals the active segment and starts a new one at its next offset.
 *
 * The seal trailer is written before the new .log exists: a read-only
 * handle (and a snapshot taken through one) treats a segment as sealed as
 * soon as the next .log appears, and from then on the segment's files must
 * never change -- snapshots may have hard-linked them.  If the new segment
 * cannot be made, the trailer is cut off again and the old segment stays
 * active; no reader can have seen it sealed, since the next .log never
 * appeared.  The old segment's .log descriptor is left alone: readers of
 * this handle may be in pread on it. */
static tk_code roll(tk_log *log, tk_err *err) {
    tk_segment *old = active(log), *s = NULL;
    /* While some handle keeps its records durable, a sealed segment is
     * made durable when it is sealed, and the new one's name too: the
     * group commit then only ever fsyncs the active segment. */
    int sync = keeps_durable(log) || tk_state_durable_writers(&log->st) > 0;
    tk_code rc = TK_OK;
    if (old->idx_fd < 0 || old->tim_fd < 0) rc = tk_seg_open_index_fds(log->dir, old, err);
    if (rc == TK_OK) rc = tk_seg_unshare(log->dir, old, 1u << TK_EXT_TIMEINDEX, sync, err);
    if (rc == TK_OK) rc = tk_seg_seal(log->dir, old, sync, err);
    if (rc == TK_OK) rc = tk_seg_create(log->dir, old->next, sync, &log->fds, &s, err);
    if (rc == TK_OK && sync) {
        tk_state_synced_to(&log->st, old->next);
        tk_state_dir_synced_to(&log->st, old->next);
    }
    if (rc == TK_OK) {
        int pushed;
        pthread_rwlock_wrlock(&log->rw);
        pushed = push_segment(log, s) == 0;
        if (pushed) {
            /* Its descriptor stays open read-write for readers in pread on
             * it now, but it is a sealed segment's like any other: the fd
             * cache may close it (evict_fds). */
            old->writable = 0;
            log->sealed_bytes += old->size;
            publish(log);
        }
        pthread_rwlock_unlock(&log->rw);
        if (pushed) {
            /* Retention runs when a segment rolls; its failure is not the
             * append's (the record is written): the next roll tries again. */
            tk_err scratch;
            tk_state_count(&log->st, TK_C_ROLLS, 1);
            retention_locked(log, NULL, &scratch);
            return TK_OK;
        }
        rc = tk_fail(err, TK_NOMEM, "roll %s: out of memory", log->dir);
        tk_seg_free(s);
    }
    remove_segment_files(log, old->next);
    if (old->tim_fd < 0) {
        tk_err scratch;
        tk_seg_open_index_fds(log->dir, old, &scratch);
    }
    if (old->tim_fd >= 0 && tk_ftruncate(old->tim_fd, (off_t)(old->idx_n * TK_TIDX_ENTRY)) < 0) {
        /* the next open sees an active .timeindex with a trailer and rebuilds it */
    }
    old->icrc_known = 0;
    return rc;
}

static int reserve_wbuf(tk_log *log, size_t need) {
    if (need <= log->wcap) return 0;
    size_t cap = log->wcap ? log->wcap : 4096;
    while (cap < need) cap *= 2;
    unsigned char *b = tk_realloc(log->wbuf, cap);
    if (!b) return -1;
    log->wbuf = b;
    log->wcap = cap;
    return 0;
}

typedef struct pending {
    tk_index ix;            /* entries for this chunk (rel, pos, max_ts) */
    tk_idxstate ws;         /* writer state after the chunk */
} pending;

/* Where the next records go: the active segment as this handle sees it
 * (under the lock), or the frontier of the shared appends under way. */
typedef struct frame_at {
    int64_t base, next;
    uint64_t size;
    tk_idxstate ws;
} frame_at;

static frame_at at_segment(const tk_segment *s) {
    frame_at at = { s->base, s->next, s->size, s->ws };
    return at;
}

/* Frames recs[i..*j) into wbuf, stopping where the segment or the chunk
 * would overflow (but always taking at least one record). */
static tk_code frame_chunk(tk_log *log, const frame_at *at, const tk_rec_in *recs, size_t i,
                           size_t n, size_t *j, size_t *len, pending *pd, int64_t now,
                           tk_err *err) {
    size_t used = 0;
    pd->ws = at->ws;
    pd->ix.n = 0;
    for (*j = i; *j < n; (*j)++) {
        tk_rec_in r = recs[*j];
        size_t sz = (size_t)tk_rec_size(r.has_key ? r.key_len : 0, r.value_len);
        int64_t off = at->next + (int64_t)(*j - i);
        if (used > 0 && (at->size + used + sz > log->o.max_segment_size ||
                         used + sz > WRITE_CHUNK))
            break;
        if (reserve_wbuf(log, used + sz) < 0)
            return tk_fail(err, TK_NOMEM, "append to %s: out of memory", log->dir);
        if (r.timestamp < 0) r.timestamp = now;
        tk_rec_encode(log->wbuf + used, off, &r);
        if (tk_idxstate_step(&pd->ws, r.timestamp, sz, log->o.index_interval_bytes) &&
            tk_index_push(&pd->ix, (uint32_t)(off - at->base), (uint32_t)(at->size + used),
                          pd->ws.max_ts) < 0)
            return tk_fail(err, TK_NOMEM, "append to %s: out of memory", log->dir);
        used += sz;
    }
    *len = used;
    return TK_OK;
}

static tk_code write_failed(tk_log *log, const tk_segment *s, tk_ext ext, int e, tk_err *err) {
    return tk_fail_errno(err, e, "append to %s/%020" PRId64 "%s", log->dir, s->base,
                         tk_ext_name[ext]);
}

/* Writes a framed chunk and its index entries; on failure every file is
 * cut back to where it was, so no torn record is left behind. */
static tk_code write_chunk(tk_log *log, tk_segment *s, size_t len, const pending *pd,
                           tk_err *err) {
    size_t n = pd->ix.n;
    uint64_t oi = s->idx_n * TK_OIDX_ENTRY, ti = s->idx_n * TK_TIDX_ENTRY;
    unsigned char ebuf[64 * TK_TIDX_ENTRY], *eb = ebuf;
    tk_code rc = TK_OK;

    if (tk_pwrite_all(s->log_fd, log->wbuf, len, s->size) < 0) {
        rc = write_failed(log, s, TK_EXT_LOG, errno, err);
        goto undo;
    }
    if (n > 0) {
        if (n > 64 && !(eb = tk_malloc(n * TK_TIDX_ENTRY))) {
            rc = tk_fail(err, TK_NOMEM, "append to %s: out of memory", log->dir);
            goto undo;
        }
        tk_index_encode_time(&pd->ix, 0, n, eb);
        if (tk_pwrite_all(s->tim_fd, eb, n * TK_TIDX_ENTRY, ti) < 0) {
            rc = write_failed(log, s, TK_EXT_TIMEINDEX, errno, err);
            goto undo;
        }
        if (s->icrc_known) s->tim_crc = tk_crc32c(s->tim_crc, eb, n * TK_TIDX_ENTRY);
        tk_index_encode_off(&pd->ix, 0, n, eb);
        if (tk_pwrite_all(s->idx_fd, eb, n * TK_OIDX_ENTRY, oi) < 0) {
            s->icrc_known = 0;
            rc = write_failed(log, s, TK_EXT_INDEX, errno, err);
            goto undo;
        }
        if (s->icrc_known) {
            s->idx_crc = tk_crc32c(s->idx_crc, eb, n * TK_OIDX_ENTRY);
            s->idx_size += n * TK_OIDX_ENTRY;
            s->tim_size += n * TK_TIDX_ENTRY;
        }
    }
    /* No fsync here, under the lock: a durable append fsyncs after it,
     * sharing the fsync with the others (group_commit).  Index files are
     * derived: recovery rebuilds what a power loss takes of them. */
    if (eb != ebuf) free(eb);
    return TK_OK;
undo:
    if (eb != ebuf) free(eb);
    if (n > 0) s->icrc_known = 0;
    if (tk_ftruncate(s->log_fd, (off_t)s->size) < 0 || tk_ftruncate(s->tim_fd, (off_t)ti) < 0 ||
        tk_ftruncate(s->idx_fd, (off_t)oi) < 0) {
        /* The published size is what counts; the next appender (any
         * process) cuts what is left before it writes. */
        tk_state_set_torn(&log->st, 1);
    }
    return rc;
}

static void publish_chunk(tk_log *log, tk_segment *s, size_t count, size_t len,
                          const pending *pd) {
    uint32_t crc = s->crc_known ? tk_crc32c(s->log_crc, log->wbuf, len) : 0;
    int in_step = s->ix.n == s->idx_n;      /* the in-memory index is not lagging */
    pthread_rwlock_wrlock(&log->rw);
    s->log_crc = crc;
    for (size_t k = 0; in_step && k < pd->ix.n; k++)
        if (tk_index_push(&s->ix, pd->ix.e[k].rel, pd->ix.e[k].pos, pd->ix.e[k].max_ts) < 0)
            break;      /* a missing in-memory entry only lengthens scans */
    s->idx_n += pd->ix.n;
    s->next += (int64_t)count;
    s->held = s->next;
    s->size += len;
    s->max_ts = pd->ws.max_ts;
    s->ws = pd->ws;
    s->dirty = 1;
    /* Published inside the critical section: no reader of this handle
     * sees the view ahead of high_water_mark(), or behind it once it
     * has the lock. */
    publish(log);
    pthread_rwlock_unlock(&log->rw);
}

static tk_code check_batch(const tk_log *log, const tk_rec_in *recs, size_t n, tk_err *err) {
    if (n == 0) return tk_fail(err, TK_INVALID, "append to %s: empty batch", log->dir);
    for (size_t i = 0; i < n; i++) {
        uint64_t sz = tk_rec_size(recs[i].has_key ? recs[i].key_len : 0, recs[i].value_len);
        if (sz > log->o.max_record_size)
            return tk_fail(err, TK_INVALID, "append to %s: record of %" PRIu64
                           " bytes exceeds max_record_size %u", log->dir, sz,
                           log->o.max_record_size);
        if (!recs[i].value && recs[i].value_len)
            return tk_fail(err, TK_INVALID, "append to %s: NULL value", log->dir);
    }
    return TK_OK;
}

/* retention discard = "new": the budget is back-pressure.  An append that
 * would take the log past max_bytes is refused whole. */
static tk_code check_budget(tk_log *log, const tk_rec_in *recs, size_t n, tk_err *err) {
    uint64_t have, add = 0;
    if (!log->o.retention_discard_new) return TK_OK;
    have = log->sealed_bytes + active(log)->size;
    for (size_t i = 0; i < n; i++) add += tk_rec_size(recs[i].has_key ? recs[i].key_len : 0,
                                                      recs[i].value_len);
    if (have + add <= log->o.retention_max_bytes) return TK_OK;
    return tk_fail(err, TK_FULL, "append to %s: the log holds %" PRIu64 " bytes; %" PRIu64
                   " more would pass retention max_bytes %" PRIu64 " (discard = \"new\")",
                   log->dir, have, add, log->o.retention_max_bytes);
}

/* The active segment's index descriptors, which a roll that failed half
 * way may have left closed (the seal closes them); reopened, its
 * .timeindex loses the trailer that roll wrote.  Caller holds the lock. */
static tk_code ready_active(tk_log *log, tk_err *err) {
    tk_segment *s = active(log);
    tk_code rc;
    if (s->idx_fd >= 0 && s->tim_fd >= 0) return TK_OK;
    if ((rc = tk_seg_open_index_fds(log->dir, s, err)) != TK_OK) return rc;
    if (tk_ftruncate(s->tim_fd, (off_t)(s->idx_n * TK_TIDX_ENTRY)) < 0 ||
        tk_ftruncate(s->idx_fd, (off_t)(s->idx_n * TK_OIDX_ENTRY)) < 0)
        return tk_fail_errno(err, errno, "append to " TK_SEG_LOG_FMT " (its index files)", log->dir, s->base);
    s->icrc_known = 0;
    return TK_OK;
}

/* Under wmu and the state's lock. */
static tk_code append_locked(tk_log *log, const tk_rec_in *recs, size_t n, int64_t *first,
                             tk_err *err) {
    pending pd = { { NULL, 0, 0 }, { 0, 0 } };
    int64_t start = active(log)->next, now = now_ms();
    size_t i = 0;
    tk_code rc = check_budget(log, recs, n, err);
    if (rc == TK_OK) rc = ready_active(log, err);
    if (rc == TK_OK) rc = unshare_active(log, 1u << TK_EXT_LOG, err);
    while (rc == TK_OK && i < n) {
        tk_segment *s = active(log);
        size_t j = i, len = 0;
        uint64_t first_size = tk_rec_size(recs[i].has_key ? recs[i].key_len : 0,
                                          recs[i].value_len);
        if (s->size > 0 && s->size + first_size > log->o.max_segment_size) {
            if ((rc = roll(log, err)) != TK_OK) break;
            s = active(log);
        }
        frame_at at = at_segment(s);
        rc = frame_chunk(log, &at, recs, i, n, &j, &len, &pd, now, err);
        if (rc == TK_OK && pd.ix.n > 0)
            rc = unshare_active(log, (1u << TK_EXT_INDEX) | (1u << TK_EXT_TIMEINDEX), err);
        if (rc == TK_OK) rc = write_chunk(log, s, len, &pd, err);
        if (rc == TK_OK) publish_chunk(log, s, j - i, len, &pd);
        i = j;
    }
    if (rc != TK_OK && active(log)->next > start) {
        tk_err scratch;                     /* all or nothing: drop the prefix */
        int64_t end = active(log)->next;
        if (truncate_locked(log, start, &scratch) != TK_OK && err) {
            /* The disk refused the undo too: some of those records may
             * stay (the files decide), and the caller must know. */
            char full[2 * sizeof err->msg + 128];
            snprintf(full, sizeof full, "%s; offsets [%" PRId64 ", %" PRId64 ") written "
                     "before it may not all have been taken back (%s)", err->msg, start, end,
                     scratch.msg);
            snprintf(err->msg, sizeof err->msg, "%.*s", (int)(sizeof err->msg - 1), full);
        }
    }
    tk_index_free(&pd.ix);
    if (rc == TK_OK && first) *first = start;
    return rc;
}

/* ------------------------------------------------------------------ */
/* Shared appends                                                       */
/* ------------------------------------------------------------------ */

/* In shared mode several processes append to one log.  Holding the lock
 * across the write would make them take turns for the whole append (the
 * pwrite is half of it), so an append that needs nothing but a write --
 * no roll, no copy of a linked file, no repair, one chunk -- only
 * reserves under the lock: it frames its records at the frontier (the
 * active segment as it will be once every append under way is
 * published), records the reservation in the shared state and moves the
 * frontier past it.  It writes its bytes outside the lock, then waits for
 * its turn -- every reservation before it published -- and publishes the
 * layout with its records, which passes the turn on.  So the published
 * layout only ever covers bytes that are written, and readers see records
 * in offset order with no hole, as before.
 *
 * Everything else (rolls, truncates, retention, repairs, cuts for
 * snapshots) takes the lock and first waits until no reservation is under
 * way (drain_locked), so it sees the files as published.
 *
 * A reservation that never publishes -- its process was killed, or its
 * write failed -- holds up the ones after it.  Whoever finds it stuck
 * takes the lock; drain_locked voids it and every reservation after it
 * (the epoch moves; it waits until their live makers have finished
 * writing, so no byte of theirs lands later), cuts the files back to
 * where the stuck one began, and the voided makers append again.  None of
 * them was acknowledged: an append returns after it published. */

/* The hard-link rule without a copy: 1 when the active .log is watched
 * and has one link (armed here first when it is not: arm, then look, as
 * log_needs_check does).  0: the locked path checks, and copies it. */
static int log_unshared(tk_log *log, tk_segment *a) {
    char path[PATH_MAX];
    if (tk_watch_armed(&log->watch, a->serial)) return !tk_watch_fired(&log->watch);
    if (tk_seg_path(path, sizeof path, log->dir, a->base, TK_EXT_LOG) < 0 ||
        tk_watch_arm(&log->watch, path, a->serial) < 0)
        return 0;
    return tk_link_count(a->log_fd) == 1;
}

/* Under the lock: reserves room for recs at the frontier and frames them
 * into wbuf.  *slot is -1 when this append needs the locked path. */
static tk_code reserve_locked(tk_log *log, const tk_rec_in *recs, size_t n, int64_t now,
                              pending *pd, size_t *len, tk_layout *f, tk_layout *after,
                              int *slot, uint32_t *epoch, tk_err *err) {
    tk_layout l;
    tk_segment *a;
    frame_at at;
    size_t j;
    tk_code rc;
    uint64_t rgen = tk_state_res_gen(&log->st);
    *slot = -1;
    if (log->nsegs == 0 || log->o.retention_discard_new || tk_state_torn(&log->st)) return TK_OK;
    a = active(log);
    if (!a->writable || a->log_fd < 0 || a->idx_fd < 0 || a->tim_fd < 0 || !log_unshared(log, a))
        return TK_OK;
    /* The layout's generation, start, active segment and flags against
     * this view: looked at only when a publish under the lock may have
     * changed them since the last time they matched (the layout's line
     * is written by every publish; this saves reading it). */
    if (rgen != log->ok.rgen || log->gen != log->ok.gen || a->base != log->ok.base ||
        log->start != log->ok.start) {
        tk_state_copy(&log->st, &l);
        if (!(l.flags & TK_LAYOUT_CHECKED) || (l.gen & 1) || l.gen != log->gen ||
            l.active_base != a->base || l.start != log->start)
            return TK_OK;
        log->ok.rgen = rgen;
        log->ok.gen = log->gen;
        log->ok.base = a->base;
        log->ok.start = log->start;
    }
    tk_state_frontier(&log->st, f);
    at = (frame_at){ a->base, f->next, f->size, { f->since, f->max_ts } };
    if ((rc = frame_chunk(log, &at, recs, 0, n, &j, len, pd, now, err)) != TK_OK) return rc;
    if (j < n || (f->size > 0 && f->size + *len > log->o.max_segment_size)) return TK_OK;
    if (pd->ix.n > 0 && (tk_link_count(a->idx_fd) > 1 || tk_link_count(a->tim_fd) > 1))
        return TK_OK;
    *after = *f;
    after->next += (int64_t)n;
    after->size += *len;
    after->idx_n += pd->ix.n;
    after->since = pd->ws.since;
    after->max_ts = pd->ws.max_ts;
    *slot = tk_state_reserve(&log->st, f, after, epoch);
    return TK_OK;
}

/* Writes a reservation's records and index entries. */
static tk_code write_reserved(tk_log *log, const tk_segment *a, const tk_layout *f, size_t len,
                              const pending *pd, tk_err *err) {
    unsigned char ebuf[64 * TK_TIDX_ENTRY], *eb = ebuf;
    size_t n = pd->ix.n;
    tk_code rc = TK_OK;
    if (tk_pwrite_all(a->log_fd, log->wbuf, len, f->size) < 0)
        return write_failed(log, a, TK_EXT_LOG, errno, err);
    if (n == 0) return TK_OK;
    if (n > 64 && !(eb = tk_malloc(n * TK_TIDX_ENTRY)))
        return tk_fail(err, TK_NOMEM, "append to %s: out of memory", log->dir);
    tk_index_encode_time(&pd->ix, 0, n, eb);
    if (tk_pwrite_all(a->tim_fd, eb, n * TK_TIDX_ENTRY, f->idx_n * TK_TIDX_ENTRY) < 0)
        rc = write_failed(log, a, TK_EXT_TIMEINDEX, errno, err);
    tk_index_encode_off(&pd->ix, 0, n, eb);
    if (rc == TK_OK && tk_pwrite_all(a->idx_fd, eb, n * TK_OIDX_ENTRY, f->idx_n * TK_OIDX_ENTRY) < 0)
        rc = write_failed(log, a, TK_EXT_INDEX, errno, err);
    if (eb != ebuf) free(eb);
    return rc;
}

/* The layout with our records, at our turn: the published one (which
 * ends where we begin) moved past them. */
static void layout_after(tk_log *log, const tk_layout *after, size_t len, const pending *pd,
                         tk_layout *p) {
    unsigned char e[TK_TIDX_ENTRY];
    tk_state_copy(&log->st, p);
    if (p->flags & TK_LAYOUT_CRC) p->log_crc = tk_crc32c(p->log_crc, log->wbuf, len);
    for (size_t k = 0; k < pd->ix.n && (p->flags & TK_LAYOUT_ICRC); k++) {
        tk_index_encode_off(&pd->ix, k, k + 1, e);
        p->idx_crc = tk_crc32c(p->idx_crc, e, TK_OIDX_ENTRY);
        tk_index_encode_time(&pd->ix, k, k + 1, e);
        p->tim_crc = tk_crc32c(p->tim_crc, e, TK_TIDX_ENTRY);
    }
    p->next = after->next;
    p->size = after->size;
    p->idx_n = after->idx_n;
    p->since = after->since;
    p->max_ts = after->max_ts;
}

/* This handle's view takes what it just published. */
static void adopt_published(tk_log *log, tk_segment *a, const tk_layout *f, const tk_layout *p,
                            const pending *pd) {
    pthread_rwlock_wrlock(&log->rw);
    if (log->nsegs > 0 && active(log) == a && log->gen == p->gen) {
        int in_step = a->ix.n == a->idx_n && a->idx_n == f->idx_n;
        adopt_counts(a, p);
        for (size_t k = 0; in_step && k < pd->ix.n; k++)
            if (tk_index_push(&a->ix, pd->ix.e[k].rel, pd->ix.e[k].pos, pd->ix.e[k].max_ts) < 0)
                break;      /* a missing in-memory entry only lengthens scans */
        a->dirty = 1;
    }
    pthread_rwlock_unlock(&log->rw);
}

/* A shared append: reserved, written and published as above when it can
 * be, else under the lock like any other.  Caller holds wmu; *end is one
 * past its records. */
static tk_code append_shared(tk_log *log, const tk_rec_in *recs, size_t n, int64_t *first,
                             int64_t *end, tk_err *err) {
    for (int tries = 0;; tries++) {
        pending pd = { { NULL, 0, 0 }, { 0, 0 } };
        tk_layout f, after, p;
        size_t len = 0;
        int repair, slot = -1, turn;
        uint32_t epoch = 0;
        tk_segment *a;
        int64_t now = now_ms();             /* read outside the lock */
        tk_code rc = tk_state_lock(&log->st, log->dir, &repair, err);
        if (rc != TK_OK) return rc;
        if (!repair && tries < 100)
            rc = reserve_locked(log, recs, n, now, &pd, &len, &f, &after, &slot, &epoch, err);
        if (rc != TK_OK || slot < 0) {
            tk_index_free(&pd.ix);
            if (rc != TK_OK) {
                tk_state_unlock(&log->st);
                return rc;
            }
            if ((rc = writer_locked(log, repair, err)) != TK_OK) return rc;
            rc = append_locked(log, recs, n, first, err);
            *end = active(log)->next;
            writer_leave(log);
            return rc;
        }
        a = active(log);
        tk_state_unlock(&log->st);
        TK_FAULT("append.reserved");
        rc = write_reserved(log, a, &f, len, &pd, err);
        tk_state_reserved_done(&log->st, slot, rc == TK_OK ? TK_RES_WRITTEN : TK_RES_FAILED);
        if (rc == TK_OK) {
            TK_FAULT("append.written");
            turn = tk_state_wait_turn(&log->st, slot, f.next, epoch);
        } else {
            turn = -1;
        }
        if (turn < 0) {
            /* The one at the turn is stuck (or it is ours, failed): the
             * lock's drain voids it and everything after it, ours too. */
            tk_err scratch;
            tk_code r2;
            log->own_res = f.next;          /* ours may reach the turn meanwhile */
            r2 = writer_enter(log, rc == TK_OK ? err : &scratch);
            log->own_res = TK_NONE;
            if (r2 == TK_OK) writer_leave(log);
            tk_index_free(&pd.ix);
            if (rc != TK_OK) return rc;
            if (r2 != TK_OK) return r2;
            continue;
        }
        if (turn == 0) {                        /* voided: append again */
            tk_index_free(&pd.ix);
            continue;
        }
        layout_after(log, &after, len, &pd, &p);
        tk_state_publish_turn(&log->st, slot, &p);
        adopt_published(log, a, &f, &p, &pd);
        tk_index_free(&pd.ix);
        *first = f.next;
        *end = after.next;
        return TK_OK;
    }
}

/* ------------------------------------------------------------------ */
/* Durability: group commit and the interval thread                     */
/* ------------------------------------------------------------------ */

typedef struct commit {
    tk_log *log;
    int fd;                 /* a dup of the .log that was written */
    int64_t base, end;      /* its segment; one past the records to make durable */
} commit;

/* The leader's fsync: it covers every record of the segment published
 * before it starts (they were written before they were published). */
static int commit_sync(void *ud, int64_t *target) {
    commit *c = ud;
    tk_layout l;
    *target = c->end;
    if (tk_state_try_read(&c->log->st, &l) && l.active_base == c->base && l.next > c->end)
        *target = l.next;
    if (c->base > tk_state_dir_synced(&c->log->st)) {       /* a segment made by a roll */
        if (tk_fsync_dir(c->log->dir) < 0) return -1;
        tk_state_dir_synced_to(&c->log->st, c->base);
    }
    return tk_state_fsync(&c->log->st, c->fd, 0);
}

/* Makes the records below end (in the active segment as of the call)
 * durable, with one fsync for everyone waiting.  Caller holds wmu, which
 * is released while waiting (other threads of this handle append then,
 * and share the next fsync). */
static tk_code group_commit(tk_log *log, int64_t end, tk_err *err) {
    tk_segment *a = active(log);
    commit c = { log, -1, a->base, end };
    int rc, e;
    if (tk_state_synced(&log->st) >= end) return TK_OK;
    if ((c.fd = fcntl(a->log_fd, F_DUPFD_CLOEXEC, 0)) < 0)
        return tk_fail_errno(err, errno, "fsync " TK_SEG_LOG_FMT, log->dir, a->base);
    pthread_mutex_unlock(&log->wmu);
    rc = tk_state_group_commit(&log->st, end, commit_sync, &c);
    e = errno;
    close(c.fd);
    pthread_mutex_lock(&log->wmu);
    if (rc < 0) return tk_fail_errno(err, e, "fsync " TK_SEG_LOG_FMT, log->dir, c.base);
    return TK_OK;
}

static tk_code take_sync_error(tk_log *log, tk_err *err) {
    int e = log->sync_errno;
    if (!e) return TK_OK;
    log->sync_errno = 0;
    return tk_fail_errno(err, e, "background fsync of %s failed; records appended before "
                         "this call may not be durable", log->dir);
}

/* sync = "interval": every sync_interval_ms, what was appended reaches the
 * disk (shared with other handles through the group commit). */
static void interval_sync(tk_log *log) {
    tk_err scratch;
    tk_code rc;
    pthread_mutex_lock(&log->wmu);
    if (log->nsegs > 0 && active(log)->log_fd >= 0 && active(log)->writable &&
        tk_state_synced(&log->st) < active(log)->next) {
        rc = group_commit(log, active(log)->next, &scratch);
        if (rc != TK_OK && !log->sync_errno) log->sync_errno = scratch.sys_errno ? scratch.sys_errno : EIO;
    }
    pthread_mutex_unlock(&log->wmu);
}

static void *syncer_main(void *arg) {
    tk_log *log = arg;
    pthread_mutex_lock(&log->smu);
    while (!log->syncer_stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += log->o.sync_interval_ms / 1000;
        until.tv_nsec += (long)(log->o.sync_interval_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
        while (!log->syncer_stop &&
               pthread_cond_timedwait(&log->scv, &log->smu, &until) != ETIMEDOUT) {}
        if (log->syncer_stop) break;
        pthread_mutex_unlock(&log->smu);
        interval_sync(log);
        pthread_mutex_lock(&log->smu);
    }
    pthread_mutex_unlock(&log->smu);
    interval_sync(log);                 /* what was appended before close */
    return NULL;
}

static tk_code start_syncer(tk_log *log, tk_err *err) {
    pthread_condattr_t a;
    int rc;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&log->scv, &a);
    pthread_condattr_destroy(&a);
    pthread_mutex_init(&log->smu, NULL);
    if ((rc = pthread_create(&log->syncer, NULL, syncer_main, log)) != 0) {
        pthread_cond_destroy(&log->scv);
        pthread_mutex_destroy(&log->smu);
        return tk_fail_errno(err, rc, "open %s: start the sync thread", log->dir);
    }
    log->syncer_running = 1;
    return TK_OK;
}

static void stop_syncer(tk_log *log) {
    if (!log->syncer_running) return;
    pthread_mutex_lock(&log->smu);
    log->syncer_stop = 1;
    pthread_cond_signal(&log->scv);
    pthread_mutex_unlock(&log->smu);
    pthread_join(log->syncer, NULL);
    pthread_cond_destroy(&log->scv);
    pthread_mutex_destroy(&log->smu);
    log->syncer_running = 0;
}

tk_code tk_log_append(tk_log *log, const tk_rec_in *recs, size_t n, int64_t *first,
                      tk_err *err) {
    tk_code rc;
    int64_t end = 0;
    if (!is_writer(log))
        return tk_fail(err, TK_READONLY, "append to %s: log is open read-only", log->dir);
    if ((rc = check_batch(log, recs, n, err)) != TK_OK) return rc;
    int keeps = durable(log);
    if (keeps) tk_state_appending(&log->st, 1);     /* the group commit's leader waits for us */
    if (keeps) TK_FAULT("append.entered");
    pthread_mutex_lock(&log->wmu);
    int64_t at = TK_NONE;
    if ((rc = take_sync_error(log, err)) != TK_OK) {
        /* reported */
    } else if (log->o.mode == TK_LOG_SHARED && !log->st.is_private) {
        rc = append_shared(log, recs, n, &at, &end, err);
    } else if ((rc = writer_enter(log, err)) == TK_OK) {
        rc = append_locked(log, recs, n, &at, err);
        end = active(log)->next;
        writer_leave(log);
    }
    if (keeps) tk_state_appending(&log->st, -1);
    if (rc == TK_OK && first) *first = at;
    /* The records are in the log (published: other handles may have read
     * them already, and appended after them), so a failed fsync cannot
     * take them back; the caller learns they may not be durable. */
    if (rc == TK_OK && durable(log) && (rc = group_commit(log, end, err)) != TK_OK)
        tk_fail_prefix(err, rc, "append to %s: offsets [%" PRId64 ", %" PRId64 ") are written "
                       "but may not survive a power loss", log->dir, at, end);
    if (log->wcap > TRIM_ABOVE) {           /* an idle handle keeps no big buffer */
        free(log->wbuf);
        log->wbuf = NULL;
        log->wcap = 0;
    }
    pthread_mutex_unlock(&log->wmu);
    evict_fds(log);                         /* a roll may have left one more open */
    if (rc == TK_OK) {
        uint64_t bytes = 0;
        for (size_t i = 0; i < n; i++)
            bytes += tk_rec_size(recs[i].has_key ? recs[i].key_len : 0, recs[i].value_len);
        tk_state_count_append(&log->st, n, bytes);
    }
    return counted(log, rc);
}

/* ------------------------------------------------------------------ */
/* Truncating                                                           */
/* ------------------------------------------------------------------ */

/* Cuts segment s (now the active one) at offset, which is inside it or
 * one past its end.  Caller holds wmu, the lock and rw exclusively. */
static tk_code cut_segment(tk_log *log, tk_segment *s, int64_t offset, tk_err *err) {
    tk_window c = { .chunk = ITER_CHUNK };
    uint64_t pos = s->size, from;
    int64_t at;
    long k;
    tk_code rc = TK_OK;

    if ((rc = tk_seg_open_writable(log->dir, s, err)) != TK_OK) goto out;
    if (offset < s->next) {
        rc = tk_seg_locate(log->dir, s, &c, offset, s->size, &pos, err);
        if (rc == TK_STALE) {
            rc = tk_seg_rebuild(log->dir, s, log->o.index_interval_bytes, s->size, 1, err);
            if (rc == TK_OK) rc = tk_seg_locate(log->dir, s, &c, offset, s->size, &pos, err);
            if (rc == TK_STALE) rc = tk_fail(err, TK_CORRUPT, "truncate %s: index of segment %020"
                                             PRId64 " is unusable", log->dir, s->base);
        }
        if (rc != TK_OK) goto out;
    }
    /* Copy only the part that stays if a file is shared. */
    s->size = pos;
    if ((rc = tk_seg_unshare(log->dir, s, TK_UNSHARE_ALL, durable(log), err)) != TK_OK) goto out;
    if (tk_ftruncate(s->log_fd, (off_t)pos) < 0) {
        rc = tk_fail_errno(err, errno, "truncate " TK_SEG_LOG_FMT, log->dir, s->base);
        goto out;
    }
    k = tk_index_floor_rel(&s->ix, (uint32_t)(offset - s->base));
    if (k >= 0 && s->ix.e[k].rel == (uint32_t)(offset - s->base)) k--;
    tk_index_truncate(&s->ix, (size_t)(k + 1));
    s->ws.since = 0;
    s->ws.max_ts = k >= 0 ? s->ix.e[k].max_ts : TK_TS_NONE;
    from = k >= 0 ? s->ix.e[k].pos : 0;
    at = k >= 0 ? s->base + s->ix.e[k].rel : s->base;
    rc = tk_seg_scan(log->dir, s, &c, &from, &at, &s->ws, log->o.index_interval_bytes, pos, 0, err);
    if (rc != TK_OK) goto out;
    s->next = s->held = offset;
    s->max_ts = s->ws.max_ts;
    s->crc_known = 0;
    rc = tk_seg_write_index(log->dir, s, 0, durable(log), err);
    if (rc == TK_OK && durable(log)) rc = tk_seg_sync(log->dir, s, err);
out:
    tk_window_free(&c);
    return rc;
}

/* Caller holds wmu and the lock; publishes under a new generation. */
static tk_code truncate_locked(tk_log *log, int64_t offset, tk_err *err) {
    size_t k;
    int reloaded = 1;
    tk_code rc;
    load_index_tail(log);
    change_begin(log);
    pthread_rwlock_wrlock(&log->rw);
    k = find_segment(log, offset);
    if (k > 0 && log->segs[k]->base == offset) k--;    /* segment k ends at offset */
    while (log->nsegs > k + 1) {                       /* newest first */
        tk_segment *s = active(log);
        remove_segment_files(log, s->base);
        tk_seg_free(s);
        log->nsegs--;
    }
    rc = cut_segment(log, active(log), offset, err);
    if (rc == TK_OK && durable(log) && tk_fsync_dir(log->dir) < 0)
        rc = tk_fail_errno(err, errno, "fsync %s", log->dir);
    log->sealed_bytes = 0;
    for (size_t i = 0; i + 1 < log->nsegs; i++) log->sealed_bytes += log->segs[i]->size;
    log->vgen++;
    pthread_rwlock_unlock(&log->rw);
    if (rc != TK_OK) {
        /* Whatever the files hold now is the truth: read it back, or
         * leave that to the next locker -- this handle included: its
         * partial view is never used or published. */
        tk_err scratch;
        pthread_rwlock_wrlock(&log->rw);
        reloaded = load_view(log, NULL, 1, &scratch) == TK_OK;
        pthread_rwlock_unlock(&log->rw);
    }
    if (log->nsegs > 0) change_end(log);
    if (!reloaded) {
        tk_state_set_stale(&log->st);
        log->gen = 0;
    }
    return rc;
}

static tk_code writable_cursors(tk_log *log, tk_err *err);

/* After a truncate: a cursor past the new end now names it (its consumer
 * has read everything the log still holds).  Caller holds wmu and the
 * lock.  A crash before this leaves such a cursor behind; commit then
 * takes the end as its value. */
static tk_code clamp_cursors(tk_log *log, int64_t end, tk_err *err) {
    tk_cursor_info *all;
    size_t n;
    tk_code rc = TK_OK;
    tk_cursors_refresh(log->dir, &log->cur);
    if ((n = tk_cursors_list(&log->cur, NULL, 0)) == 0) return TK_OK;
    if (!(all = tk_malloc(n * sizeof *all)))
        return tk_fail(err, TK_NOMEM, "truncate %s: out of memory", log->dir);
    n = tk_cursors_list(&log->cur, all, n);
    for (size_t i = 0; i < n && rc == TK_OK; i++) {
        if (all[i].offset <= end) continue;
        if ((rc = writable_cursors(log, err)) == TK_OK)
            rc = tk_cursors_put(&log->cur, log->dir, all[i].name, end, durable(log), err);
    }
    free(all);
    return rc;
}

tk_code tk_log_truncate(tk_log *log, int64_t offset, tk_err *err) {
    tk_code rc = TK_OK;
    int64_t base, hwm;
    if (!is_writer(log))
        return tk_fail(err, TK_READONLY, "truncate %s: log is open read-only", log->dir);
    pthread_mutex_lock(&log->wmu);
    if ((rc = writer_enter(log, err)) != TK_OK) {
        pthread_mutex_unlock(&log->wmu);
        return rc;
    }
    base = base_locked(log);
    hwm = hwm_locked(log);
    if (offset < base || offset > hwm)
        rc = tk_fail(err, TK_OUT_OF_RANGE, "truncate %s: offset %" PRId64
                     " is outside [%" PRId64 ", %" PRId64 "]", log->dir, offset, base, hwm);
    else if (offset < hwm && (rc = truncate_locked(log, offset, err)) == TK_OK)
        rc = clamp_cursors(log, offset, err);
    writer_leave(log);
    pthread_mutex_unlock(&log->wmu);
    if (rc == TK_OK) tk_state_count(&log->st, TK_C_TRUNCATES, 1);
    return counted(log, rc);
}

/* ------------------------------------------------------------------ */
/* Following the files (read-only handles without a shared state)      */
/* ------------------------------------------------------------------ */

/* Picks up records the writer appended to s; sets *reload_needed when the
 * .log changed under us in a way only a full reload can follow. */
static tk_code follow_segment(tk_log *log, tk_segment *s, int *reload_needed, tk_err *err) {
    char path[PATH_MAX];
    struct stat st, fst;
    tk_window c = { .chunk = ITER_CHUNK };
    uint64_t pos = s->size;
    tk_code rc;

    if (tk_seg_path(path, sizeof path, log->dir, s->base, TK_EXT_LOG) < 0 || stat(path, &st) < 0) {
        if (errno == ENOENT && s->next == s->base) return TK_OK;    /* not created yet */
        *reload_needed = 1;
        return TK_OK;
    }
    if ((uint64_t)st.st_size < s->size ||
        (s->log_fd >= 0 && fstat(s->log_fd, &fst) == 0 && fst.st_ino != st.st_ino)) {
        *reload_needed = 1;             /* truncated, restored or copied on write */
        return TK_OK;
    }
    if ((uint64_t)st.st_size == s->size) return TK_OK;
    rc = tk_seg_scan(log->dir, s, &c, &pos, &s->next, &s->ws, log->o.index_interval_bytes,
                     (uint64_t)st.st_size, 1, err);
    if (pos != s->size) s->crc_known = 0;
    s->icrc_known = 0;
    s->size = pos;
    s->held = s->next;
    s->idx_n = s->ix.n;
    s->max_ts = s->ws.max_ts;
    tk_window_free(&c);
    return rc;
}

static tk_code refresh_private_locked(tk_log *log, tk_err *err) {
    for (;;) {
        tk_segment *s = active(log);
        char path[PATH_MAX];
        struct stat st;
        int reload_needed = 0;
        tk_code rc = follow_segment(log, s, &reload_needed, err);
        if (rc != TK_OK) return rc;
        if (reload_needed) { log->vgen++; return load_view(log, NULL, 0, err); }
        /* The writer rolled when a file named by our next offset exists. */
        if (s->next == s->base || tk_seg_path(path, sizeof path, log->dir, s->next, TK_EXT_LOG) < 0 ||
            stat(path, &st) < 0)
            return TK_OK;
        tk_segment *ns = tk_seg_new(s->next, &log->fds);
        if (!ns || push_segment(log, ns) < 0) {
            tk_seg_free(ns);
            return tk_fail(err, TK_NOMEM, "refresh %s: out of memory", log->dir);
        }
    }
}

static tk_code refresh_private(tk_log *log, tk_err *err) {
    tk_code rc;
    pthread_mutex_lock(&log->wmu);
    pthread_rwlock_wrlock(&log->rw);
    rc = refresh_private_locked(log, err);
    pthread_rwlock_unlock(&log->rw);
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Descriptors of sealed segments                                       */
/* ------------------------------------------------------------------ */

static int by_use(const void *a, const void *b) {
    uint64_t x = (*(tk_segment *const *)a)->used, y = (*(tk_segment *const *)b)->used;
    return (x > y) - (x < y);
}

/* Closes the least recently used sealed .log descriptors once more than
 * max are open: down to three quarters of max, so that the exclusive
 * lock is taken now and then, not on every read. */
static void evict_fds(tk_log *log) {
    unsigned open = __atomic_load_n(&log->fds.open, __ATOMIC_RELAXED), keep;
    tk_segment **cand;
    size_t n = 0;
    if (open <= log->fds.max) return;
    keep = log->fds.max - log->fds.max / 4;
    pthread_rwlock_wrlock(&log->rw);
    cand = malloc(log->nsegs * sizeof *cand);
    if (cand) {
        for (size_t i = 0; i + 1 < log->nsegs; i++) {
            tk_segment *s = log->segs[i];
            if (s->log_fd >= 0 && !s->writable) cand[n++] = s;
        }
        qsort(cand, n, sizeof *cand, by_use);
        for (size_t i = 0; i < n && __atomic_load_n(&log->fds.open, __ATOMIC_RELAXED) > keep; i++)
            tk_seg_close_fd(cand[i]);
        free(cand);
    }
    pthread_rwlock_unlock(&log->rw);
}

/* ------------------------------------------------------------------ */
/* Reading                                                              */
/* ------------------------------------------------------------------ */

/* An index entry did not lead where it claimed: rebuild that segment's
 * index from its .log, and rewrite the files when we may (a writer, under
 * the lock; the active segment's under a new generation, since other
 * writers hold its index files open). */
static tk_code repair_index(tk_log *log, int64_t offset, tk_err *err) {
    tk_code rc = TK_OK;
    int locked = 0, sealed = 1, inside;
    size_t k = 0;
    pthread_mutex_lock(&log->wmu);
    if (is_writer(log)) {
        if ((rc = writer_enter(log, err)) != TK_OK) goto out;
        locked = 1;
    }
    /* wmu keeps the array as it is between these two critical sections. */
    pthread_rwlock_rdlock(&log->rw);
    inside = offset >= base_locked(log) && offset < hwm_locked(log);
    if (inside) {
        k = find_segment(log, offset);
        sealed = k + 1 < log->nsegs;
    }
    pthread_rwlock_unlock(&log->rw);
    if (!inside) goto done;
    if (locked && !sealed) change_begin(log);
    pthread_rwlock_wrlock(&log->rw);
    {
        tk_segment *s = log->segs[k];
        rc = tk_seg_rebuild(log->dir, s, log->o.index_interval_bytes, s->size, !sealed, err);
        if (rc == TK_OK && locked) rc = tk_seg_write_index(log->dir, s, sealed, durable(log), err);
        log->vgen++;
    }
    pthread_rwlock_unlock(&log->rw);
    if (locked && !sealed) change_end(log);
done:
    if (locked) writer_leave(log);
out:
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

/* The read path of read, offset_for_time and the iterator: bring the view
 * up to date, run fn under the shared rwlock, and when an index entry
 * lied (TK_STALE) rebuild that index once and run fn again. */
typedef tk_code (*view_fn)(tk_log *log, void *arg, int64_t *stale_at, tk_err *err);

/* Whether the files may have changed since the view was taken: another
 * process truncated or restored (a new generation) or moved the start. */
static int view_moved(tk_log *log) {
    int moved;
    if (log->st.is_private) return 1;
    pthread_rwlock_rdlock(&log->rw);
    moved = tk_state_gen(&log->st) != log->gen || tk_state_start(&log->st) != log->start;
    pthread_rwlock_unlock(&log->rw);
    return moved;
}

static tk_code with_view(tk_log *log, view_fn fn, void *arg, const char *op, tk_err *err) {
    int repaired = 0, refreshed = 0;
    tk_code rc = tk_log_refresh(log, err);
    while (rc == TK_OK) {
        int64_t stale_at = -1;
        pthread_rwlock_rdlock(&log->rw);
        rc = fn(log, arg, &stale_at, err);
        pthread_rwlock_unlock(&log->rw);
        if ((rc == TK_NOT_FOUND || rc == TK_CORRUPT) && refreshed++ < 3 && view_moved(log)) {
            /* The files changed under the view: another process truncated
             * (and rewrote) the bytes being read, or retention removed a
             * segment after moving the start.  Read again from the new
             * view (the read may then be OUT_OF_RANGE); what is still
             * missing or damaged after that is reported as it is. */
            rc = tk_log_refresh(log, err);
            continue;
        }
        if (rc != TK_STALE) break;
        if (repaired++) {
            rc = tk_fail(err, TK_CORRUPT, "%s %s: the index is unusable at offset %" PRId64,
                         op, log->dir, stale_at);
            break;
        }
        rc = repair_index(log, stale_at, err);
    }
    evict_fds(log);
    return rc;
}

static tk_code out_of_range(const tk_log *log, const char *op, int64_t offset, int64_t base,
                            int64_t hwm, tk_err *err) {
    return tk_fail(err, TK_OUT_OF_RANGE, "%s %s: offset %" PRId64 " is outside [%" PRId64
                   ", %" PRId64 ")", op, log->dir, offset, base, hwm);
}

/* Offsets a sealed segment should hold but does not: the file of the
 * segment after it is missing. */
static tk_code missing(const tk_log *log, const char *op, const tk_segment *s, int64_t offset,
                       tk_err *err) {
    char name[TK_SEG_NAME_MAX];
    tk_seg_name(name, sizeof name, s->held, TK_EXT_LOG);
    return tk_fail(err, TK_CORRUPT, "%s %s: offset %" PRId64 " is in [%" PRId64 ", %" PRId64
                   "), which no segment holds: %s is missing", op, log->dir, offset, s->held,
                   s->next, name);
}

static void fill_record(tk_record *rec, const tk_rec_hdr *h, const unsigned char *p) {
    rec->offset = h->offset;
    rec->timestamp = h->timestamp;
    rec->has_key = (h->attrs & TK_ATTR_HAS_KEY) != 0;
    rec->key = p + TK_REC_HEADER;
    rec->key_len = h->key_len;
    rec->value = p + TK_REC_HEADER + h->key_len;
    rec->value_len = h->value_len;
}

typedef struct read_arg {
    int64_t offset;
    tk_record *rec;
} read_arg;

static tk_code read_fn(tk_log *log, void *arg, int64_t *stale_at, tk_err *err) {
    read_arg *a = arg;
    tk_window c = { .buf = a->rec->buf, .cap = a->rec->cap,
                    .chunk = log->o.index_interval_bytes + 4096 };
    int64_t base = base_locked(log), hwm = hwm_locked(log);
    tk_segment *s;
    uint64_t pos;
    tk_rec_hdr h;
    const unsigned char *p;
    tk_code rc;
    if (a->offset < base || a->offset >= hwm)
        return out_of_range(log, "read", a->offset, base, hwm, err);
    s = log->segs[find_segment(log, a->offset)];
    if (a->offset >= s->held) return missing(log, "read", s, a->offset, err);
    rc = tk_seg_locate(log->dir, s, &c, a->offset, s->size, &pos, err);
    if (rc == TK_OK) rc = tk_seg_read_at(log->dir, s, &c, pos, a->offset, s->size, &h, &p, err);
    if (rc == TK_OK) fill_record(a->rec, &h, p);
    a->rec->buf = c.buf;
    a->rec->cap = c.cap;
    if (rc == TK_STALE) *stale_at = a->offset;
    if (rc == TK_CORRUPT) rc = tk_fail_prefix(err, TK_CORRUPT, "read offset %" PRId64, a->offset);
    return rc;
}

tk_code tk_log_read(tk_log *log, int64_t offset, tk_record *rec, tk_err *err) {
    read_arg a = { offset, rec };
    tk_code rc = with_view(log, read_fn, &a, "read", err);
    if (rc == TK_OK) tk_state_count(&log->st, TK_C_READS, 1);
    return counted(log, rc);
}

void tk_record_free(tk_record *rec) {
    free(rec->buf);
    memset(rec, 0, sizeof *rec);
}

typedef struct time_arg {
    int64_t ts;
    int64_t *offset;
} time_arg;

static tk_code time_fn(tk_log *log, void *arg, int64_t *stale_at, tk_err *err) {
    time_arg *a = arg;
    tk_window c = { .chunk = log->o.index_interval_bytes + 4096 };
    tk_code rc = TK_OK;
    *a->offset = hwm_locked(log);
    for (size_t i = 0; i < log->nsegs; i++) {
        tk_segment *s = log->segs[i];
        if (s->held == s->base || s->max_ts == TK_TS_NONE || s->max_ts < a->ts) continue;
        /* Records below the log start are gone, even where a segment
         * still holds them (delete_before inside a segment). */
        rc = tk_seg_find_time(log->dir, s, &c, a->ts, log->start, s->size, a->offset, err);
        if (rc == TK_STALE) *stale_at = s->base;
        /* A segment whose recorded largest timestamp promised more than
         * its records hold: look on in the next ones. */
        if (rc == TK_OK && *a->offset >= s->held && i + 1 < log->nsegs) {
            *a->offset = hwm_locked(log);
            continue;
        }
        break;
    }
    tk_window_free(&c);
    return rc;
}

tk_code tk_log_offset_for_time(tk_log *log, int64_t ts, int64_t *offset, tk_err *err) {
    time_arg a = { ts, offset };
    return counted(log, with_view(log, time_fn, &a, "offset_for_time", err));
}

/* ------------------------------------------------------------------ */
/* Iterating                                                            */
/* ------------------------------------------------------------------ */

tk_code tk_iter_open(tk_log *log, int64_t from, int64_t to, tk_iter **out, tk_err *err) {
    tk_iter *it;
    int64_t base, hwm;
    tk_code rc = tk_log_refresh(log, err);
    if (rc != TK_OK) return rc;
    pthread_rwlock_rdlock(&log->rw);
    base = base_locked(log);
    hwm = hwm_locked(log);
    pthread_rwlock_unlock(&log->rw);
    if (from < base || from > hwm)
        return tk_fail(err, TK_OUT_OF_RANGE, "records %s: offset %" PRId64 " is outside [%"
                       PRId64 ", %" PRId64 "]", log->dir, from, base, hwm);
    if (!(it = tk_calloc(1, sizeof *it))) return tk_fail(err, TK_NOMEM, "records %s: out of memory", log->dir);
    it->log = log;
    it->next = from;
    it->end = to < 0 || to > hwm ? hwm : to;
    it->c.chunk = ITER_CHUNK;
    *out = it;
    return TK_OK;
}

/* Finds the segment and position of it->next.  Caller holds rw shared. */
static tk_code iter_position(tk_iter *it, tk_err *err) {
    tk_log *log = it->log;
    tk_segment *s;
    if (it->next < base_locked(log))
        return out_of_range(log, "records", it->next, base_locked(log), hwm_locked(log), err);
    it->si = find_segment(log, it->next);
    s = log->segs[it->si];
    tk_window_reset(&it->c);
    it->vgen = log->vgen;
    it->positioned = 1;
    if (it->next >= s->held) return missing(log, "records", s, it->next, err);
    return tk_seg_locate(log->dir, s, &it->c, it->next, s->size, &it->pos, err);
}

typedef struct iter_arg {
    tk_iter *it;
    tk_record *rec;
    int *done;
} iter_arg;

static tk_code iter_fn(tk_log *log, void *arg, int64_t *stale_at, tk_err *err) {
    iter_arg *a = arg;
    tk_iter *it = a->it;
    tk_segment *s;
    tk_rec_hdr h;
    const unsigned char *p;
    tk_code rc = TK_OK;
    int fresh;
    if (it->end > hwm_locked(log)) it->end = hwm_locked(log);   /* truncated */
    if (it->next >= it->end) { *a->done = 1; return TK_OK; }
    fresh = !it->positioned || it->vgen != log->vgen;
    if (fresh) rc = iter_position(it, err);
    if (rc == TK_OK) {
        s = log->segs[it->si];
        while (it->next >= s->next && it->si + 1 < log->nsegs) {
            s = log->segs[++it->si];
            it->pos = 0;
        }
        if (it->next >= s->held) return missing(log, "records", s, it->next, err);
        rc = tk_seg_read_at(log->dir, s, &it->c, it->pos, it->next, s->size, &h, &p, err);
        /* Damage right before this record leaves the running position
         * on it, not on the record: the index knows where it is. */
        if (rc == TK_CORRUPT && !fresh) {
            uint64_t at;
            tk_err scratch;
            if (tk_seg_locate(log->dir, s, &it->c, it->next, s->size, &at, &scratch) == TK_OK &&
                at != it->pos) {
                it->pos = at;
                rc = tk_seg_read_at(log->dir, s, &it->c, it->pos, it->next, s->size, &h, &p, err);
            }
        }
    }
    if (rc == TK_OK) {
        fill_record(a->rec, &h, p);
        it->pos += tk_rec_total(&h);
        it->next++;
    }
    if (rc == TK_STALE) {
        it->positioned = 0;
        *stale_at = it->next;
    }
    *a->done = 0;
    return rc;
}

tk_code tk_iter_next(tk_iter *it, tk_record *rec, int *done, tk_err *err) {
    iter_arg a = { it, rec, done };
    tk_code rc;
    if (it->c.cap > TRIM_ABOVE) tk_window_free(&it->c);     /* the last record was big */
    rc = with_view(it->log, iter_fn, &a, "records", err);
    if (rc == TK_OK && !*done) tk_state_count(&it->log->st, TK_C_READS, 1);
    return counted(it->log, rc);
}

void tk_iter_close(tk_iter *it) {
    if (!it) return;
    tk_window_free(&it->c);
    free(it);
}

/* ------------------------------------------------------------------ */
/* Flushing, syncing, waiting, accessors                                */
/* ------------------------------------------------------------------ */

tk_code tk_log_flush(tk_log *log, tk_err *err) {
    (void)log; (void)err;
    return TK_OK;       /* every append already reached the kernel */
}

tk_code tk_log_sync(tk_log *log, tk_err *err) {
    tk_code rc = TK_OK;
    if (!is_writer(log)) return TK_OK;
    pthread_mutex_lock(&log->wmu);
    for (size_t i = 0; i < log->nsegs && rc == TK_OK; i++)
        if (log->segs[i]->dirty || i + 1 == log->nsegs)
            rc = tk_seg_sync(log->dir, log->segs[i], err);
    if (rc == TK_OK) tk_state_count(&log->st, TK_C_FSYNCS, 1);
    if (rc == TK_OK && tk_fsync_dir(log->dir) < 0)
        rc = tk_fail_errno(err, errno, "fsync %s", log->dir);
    if (rc == TK_OK && log->nsegs > 0) tk_state_synced_to(&log->st, active(log)->next);
    if (rc == TK_OK) rc = take_sync_error(log, err);
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

int tk_log_wait(tk_log *log, int64_t offset, int64_t timeout_ms) {
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int64_t left = timeout_ms;
        int r;
        if (log->st.is_private) {
            tk_err scratch;
            refresh_private(log, &scratch);
            pthread_rwlock_rdlock(&log->rw);
            __atomic_store_n(&log->st.sh->next, hwm_locked(log), __ATOMIC_SEQ_CST);
            pthread_rwlock_unlock(&log->rw);
        }
        if (timeout_ms >= 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            left = timeout_ms - ((int64_t)(now.tv_sec - t0.tv_sec) * 1000 +
                                 (now.tv_nsec - t0.tv_nsec) / 1000000);
            if (left < 0) left = 0;
        }
        r = tk_state_wait(&log->st, offset, left);
        if (r >= 0) return r;
    }
}

/* The published layout is rebuilt first when it is marked stale (an
 * in-place restore, a writer that died): the accessors never answer with
 * the old log's offsets. */
static void unstale(tk_log *log) {
    tk_err scratch;
    if (tk_state_is_stale(&log->st)) tk_log_refresh(log, &scratch);
}

int64_t tk_log_high_water_mark(tk_log *log) {
    int64_t v;
    if (!log->st.is_private) { unstale(log); return tk_state_next(&log->st); }
    pthread_rwlock_rdlock(&log->rw);
    v = hwm_locked(log);
    pthread_rwlock_unlock(&log->rw);
    return v;
}

int64_t tk_log_base_offset(tk_log *log) {
    int64_t v;
    if (!log->st.is_private) { unstale(log); return tk_state_start(&log->st); }
    pthread_rwlock_rdlock(&log->rw);
    v = base_locked(log);
    pthread_rwlock_unlock(&log->rw);
    return v;
}

size_t tk_log_num_segments(tk_log *log) {
    size_t v;
    pthread_rwlock_rdlock(&log->rw);
    v = log->nsegs;
    pthread_rwlock_unlock(&log->rw);
    return v;
}

uint64_t tk_log_size(tk_log *log) {
    uint64_t v = 0;
    pthread_rwlock_rdlock(&log->rw);
    for (size_t i = 0; i < log->nsegs; i++) v += log->segs[i]->size;
    pthread_rwlock_unlock(&log->rw);
    return v;
}

const char *tk_log_dir(const tk_log *log) { return log->dir; }
tk_log_mode tk_log_get_mode(const tk_log *log) { return log->o.mode; }

size_t tk_log_segments(tk_log *log, tk_segment_info *out, size_t cap) {
    size_t n;
    pthread_rwlock_rdlock(&log->rw);
    n = log->nsegs;
    for (size_t i = 0; i < n && i < cap; i++) {
        const tk_segment *s = log->segs[i];
        out[i].base_offset = s->base;
        out[i].next_offset = s->next;
        out[i].size = s->size;
        out[i].active = i + 1 == n;
    }
    pthread_rwlock_unlock(&log->rw);
    return n;
}

/* ------------------------------------------------------------------ */
/* Retention: moving the log start offset                               */
/* ------------------------------------------------------------------ */

/* Moves the log start to new_start (start <= new_start <= hwm) and
 * deletes the segments wholly below it.  Caller holds wmu and the lock.
 *
 * Crash states: 1. .start names the new start (atomic replace) [a reopen
 * starts there: records below are gone, whatever files are left]; 2. the
 * layout publishes it [other handles drop those segments]; 3. the
 * segments' files are removed oldest first, .log before its index files
 * [a writer that loads the view from the files removes what is left
 * below .start]; 4. .start is removed when the start is the first
 * segment's base (the files say as much). */
static tk_code move_start(tk_log *log, int64_t new_start, size_t *deleted, tk_err *err) {
    char path[PATH_MAX], buf[32];
    size_t k = 0, n;
    int64_t *gone;
    tk_code rc = TK_OK;
    while (k + 1 < log->nsegs && log->segs[k]->next <= new_start) k++;
    if (deleted) *deleted = k;
    if (new_start <= log->start && k == 0) return TK_OK;
    if (tk_path_join(path, sizeof path, log->dir, TK_START_FILE) < 0)
        return tk_fail_errno(err, errno, "delete_before %s", log->dir);
    if (new_start > log->start) {
        n = (size_t)snprintf(buf, sizeof buf, "%" PRId64 "\n", new_start);
        if (tk_replace_file(path, buf, n, durable(log)) < 0)
            return tk_fail_errno(err, errno, "write %s", path);
        TK_FAULT("retention.start");
    }
    if (!(gone = tk_malloc((k + 1) * sizeof *gone)))
        return tk_fail(err, TK_NOMEM, "delete_before %s: out of memory", log->dir);
    pthread_rwlock_wrlock(&log->rw);
    for (size_t i = 0; i < k; i++) gone[i] = log->segs[i]->base;
    drop_below(log, new_start);
    log->start = new_start;
    publish(log);
    pthread_rwlock_unlock(&log->rw);
    TK_FAULT("retention.published");
    tk_state_count(&log->st, TK_C_SEGMENTS_DELETED, k);
    for (size_t i = 0; i < k; i++) {
        remove_segment_files(log, gone[i]);
        if (i == 0) TK_FAULT("retention.removing");
    }
    free(gone);
    if (k > 0) TK_FAULT("retention.removed");
    if (k > 0 && durable(log) && tk_fsync_dir(log->dir) < 0)
        rc = tk_fail_errno(err, errno, "fsync %s", log->dir);
    if (rc == TK_OK && new_start == log->segs[0]->base) unlink(path);
    return rc;
}

/* The lowest committed cursor, or TK_NONE when there is none. */
static int64_t lowest_cursor(tk_log *log) {
    tk_cursor_info buf[64], *all = buf;
    size_t n;
    int64_t low = TK_NONE;
    tk_cursors_refresh(log->dir, &log->cur);
    n = tk_cursors_list(&log->cur, buf, 64);
    if (n > 64 && (all = malloc(n * sizeof *all)) != NULL) tk_cursors_list(&log->cur, all, n);
    else if (n > 64) return log->start;         /* out of memory: delete nothing */
    for (size_t i = 0; i < n; i++)
        if (low == TK_NONE || all[i].offset < low) low = all[i].offset;
    if (all != buf) free(all);
    return low;
}

/* Whole sealed segments, oldest first: by total bytes (unless the budget
 * is back-pressure), by age of their newest record; never at or above the
 * lowest cursor with keep_uncommitted.  Caller holds wmu and the lock. */
static tk_code retention_locked(tk_log *log, size_t *deleted, tk_err *err) {
    const tk_log_opts *o = &log->o;
    uint64_t total = log->sealed_bytes + active(log)->size;
    int64_t limit = INT64_MAX, now = now_ms(), new_start = log->start;
    size_t k = 0;
    if (deleted) *deleted = 0;
    if (!o->retention_max_bytes && o->retention_max_age_ms == TK_NONE) return TK_OK;
    if (o->retention_keep_uncommitted) {
        limit = lowest_cursor(log);
        if (limit == TK_NONE) return TK_OK;     /* nothing committed: nothing goes */
    }
    for (; k + 1 < log->nsegs; k++) {
        const tk_segment *s = log->segs[k];
        int by_bytes = o->retention_max_bytes && !o->retention_discard_new &&
                       total > o->retention_max_bytes;
        int by_age = o->retention_max_age_ms != TK_NONE && s->max_ts != TK_TS_NONE &&
                     s->max_ts < now - o->retention_max_age_ms;
        if ((!by_bytes && !by_age) || s->next > limit) break;
        total -= s->size;
        new_start = s->next;
    }
    if (k == 0) return TK_OK;
    return move_start(log, new_start, deleted, err);
}

tk_code tk_log_delete_before(tk_log *log, int64_t offset, int64_t *base, tk_err *err) {
    tk_code rc;
    if (!is_writer(log))
        return tk_fail(err, TK_READONLY, "delete_before %s: log is open read-only", log->dir);
    pthread_mutex_lock(&log->wmu);
    if ((rc = writer_enter(log, err)) == TK_OK) {
        if (offset > hwm_locked(log))
            rc = tk_fail(err, TK_OUT_OF_RANGE, "delete_before %s: offset %" PRId64 " is past "
                         "the high water mark %" PRId64, log->dir, offset, hwm_locked(log));
        else if (offset > log->start)
            rc = move_start(log, offset, NULL, err);
        if (base) *base = log->start;
        writer_leave(log);
    }
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

tk_code tk_log_apply_retention(tk_log *log, size_t *deleted, tk_err *err) {
    tk_code rc;
    if (deleted) *deleted = 0;
    if (!is_writer(log))
        return tk_fail(err, TK_READONLY, "apply_retention %s: log is open read-only", log->dir);
    pthread_mutex_lock(&log->wmu);
    if ((rc = writer_enter(log, err)) == TK_OK) {
        rc = retention_locked(log, deleted, err);
        writer_leave(log);
    }
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Cursors                                                              */
/* ------------------------------------------------------------------ */

/* The cursor file mapped for writing (created when missing).  Caller
 * holds wmu and the lock. */
static tk_code writable_cursors(tk_log *log, tk_err *err) {
    if (log->cur.map && log->cur.writable) return TK_OK;
    tk_cursors_close(&log->cur);
    return tk_cursors_open(log->dir, 1, &log->cur, err);
}

tk_code tk_log_commit(tk_log *log, const char *name, int64_t offset, const tk_commit_opts *o,
                      tk_err *err) {
    static const tk_commit_opts none = { 0, 0, 0 };
    int64_t have = 0;
    int found;
    tk_code rc = tk_cursor_check_name(name, err);
    if (rc != TK_OK) return rc;
    if (!o) o = &none;
    if (!is_writer(log))
        return tk_fail(err, TK_READONLY, "commit %s: log is open read-only", log->dir);
    pthread_mutex_lock(&log->wmu);
    if ((rc = writer_enter(log, err)) != TK_OK) goto out;
    if ((rc = writable_cursors(log, err)) != TK_OK) goto leave;
    found = tk_cursors_get(&log->cur, name, &have);
    if (offset < log->start || offset > hwm_locked(log))
        rc = tk_fail(err, TK_OUT_OF_RANGE, "commit %s to %s: offset %" PRId64 " is outside [%"
                     PRId64 ", %" PRId64 "]", name, log->dir, offset, log->start,
                     hwm_locked(log));
    else if (o->has_expect && (o->expect == TK_NONE ? found : !found || have != o->expect)) {
        char now[40], want[40];
        snprintf(now, sizeof now, found ? "%" PRId64 : "none", have);
        snprintf(want, sizeof want, o->expect == TK_NONE ? "none" : "%" PRId64, o->expect);
        rc = tk_fail(err, TK_CONFLICT, "commit %s to %s: the committed offset is %s, not the "
                     "expected %s", name, log->dir, now, want);
    } else if (found && offset < (have > hwm_locked(log) ? hwm_locked(log) : have) && !o->force)
        rc = tk_fail(err, TK_INVALID, "commit %s to %s: offset %" PRId64 " is behind the "
                     "committed %" PRId64 " (force = true moves a cursor back)", name,
                     log->dir, offset, have);
    else
        rc = tk_cursors_put(&log->cur, log->dir, name, offset, durable(log), err);
    if (rc == TK_OK) tk_state_count(&log->st, TK_C_CURSOR_COMMITS, 1);
leave:
    writer_leave(log);
out:
    pthread_mutex_unlock(&log->wmu);
    return counted(log, rc);
}

tk_code tk_log_committed(tk_log *log, const char *name, int64_t *offset, int *found,
                         tk_err *err) {
    tk_code rc = tk_cursor_check_name(name, err);
    *found = 0;
    if (rc != TK_OK) return rc;
    pthread_mutex_lock(&log->wmu);              /* the mapping may be made or remade */
    tk_cursors_refresh(log->dir, &log->cur);
    *found = tk_cursors_get(&log->cur, name, offset);
    pthread_mutex_unlock(&log->wmu);
    return TK_OK;
}

size_t tk_log_cursors(tk_log *log, tk_cursor_info *out, size_t cap) {
    size_t n;
    pthread_mutex_lock(&log->wmu);
    tk_cursors_refresh(log->dir, &log->cur);
    n = tk_cursors_list(&log->cur, out, cap);
    pthread_mutex_unlock(&log->wmu);
    return n;
}

tk_code tk_log_delete_cursor(tk_log *log, const char *name, tk_err *err) {
    int found = 0;
    tk_code rc = tk_cursor_check_name(name, err);
    if (rc != TK_OK) return rc;
    if (!is_writer(log))
        return tk_fail(err, TK_READONLY, "delete_cursor %s: log is open read-only", log->dir);
    pthread_mutex_lock(&log->wmu);
    if ((rc = writer_enter(log, err)) == TK_OK) {
        rc = writable_cursors(log, err);
        if (rc == TK_OK) rc = tk_cursors_remove(&log->cur, log->dir, name, durable(log), &found, err);
        writer_leave(log);
    }
    pthread_mutex_unlock(&log->wmu);
    if (rc == TK_OK && !found)
        rc = tk_fail(err, TK_NOT_FOUND, "delete_cursor %s: no cursor %s", log->dir, name);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Cutting (snapshots, cut.h)                                           */
/* ------------------------------------------------------------------ */

void tk_cut_free(tk_cut *cut) {
    for (size_t i = 0; i < cut->n; i++) {
        if (cut->segs[i].log_fd >= 0) close(cut->segs[i].log_fd);
        free(cut->segs[i].idx);
        free(cut->segs[i].tim);
    }
    free(cut->segs);
    free(cut->dir);
    free(cut->cursors);
    memset(cut, 0, sizeof *cut);
}

/* The active segment's part of the cut: a descriptor and the index files
 * as they stand at the cut (no seal trailer: it stays active when restored). */
static tk_code cut_active(tk_log *log, tk_segment *s, tk_cut_seg *cs, tk_err *err) {
    int fd;
    tk_code rc = tk_seg_fd(log->dir, s, &fd, err);
    if (rc != TK_OK) return rc;
    if ((cs->log_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
        return tk_fail_errno(err, errno, "snapshot %s", log->dir);
    cs->idx_len = s->ix.n * TK_OIDX_ENTRY;
    cs->tim_len = s->ix.n * TK_TIDX_ENTRY;
    cs->idx = tk_malloc(cs->idx_len + 1);
    cs->tim = tk_malloc(cs->tim_len + 1);
    if (!cs->idx || !cs->tim) return tk_fail(err, TK_NOMEM, "snapshot %s: out of memory", log->dir);
    tk_index_encode_off(&s->ix, 0, s->ix.n, cs->idx);
    tk_index_encode_time(&s->ix, 0, s->ix.n, cs->tim);
    return TK_OK;
}

static tk_code cut_locked(tk_log *log, tk_cut *cut, tk_err *err) {
    tk_code rc = TK_OK;
    if (!(cut->segs = tk_calloc(log->nsegs, sizeof *cut->segs)) ||
        !(cut->dir = tk_strdup(log->dir)))
        return tk_fail(err, TK_NOMEM, "snapshot %s: out of memory", log->dir);
    for (size_t i = 0; i < log->nsegs && rc == TK_OK; i++) {
        tk_segment *s = log->segs[i];
        tk_cut_seg *cs = &cut->segs[i];
        cut->n = i + 1;
        cs->log_fd = -1;
        cs->base = s->base;
        cs->next = s->next;
        cs->size = s->size;
        cs->sealed = i + 1 < log->nsegs;
        if (s->next == s->base && cs->sealed) continue;
        if ((rc = tk_seg_ensure_crc(log->dir, s, err)) != TK_OK) break;
        cs->log_crc = s->log_crc;
        cs->icrc_known = s->icrc_known;
        cs->idx_size = s->idx_size;
        cs->tim_size = s->tim_size;
        cs->idx_crc = s->idx_crc;
        cs->tim_crc = s->tim_crc;
        if (!cs->sealed) rc = cut_active(log, s, cs, err);
    }
    cut->base_offset = base_locked(log);
    cut->high_water_mark = hwm_locked(log);
    cut->gen = log->gen;
    cut->state = &log->st;
    if (rc == TK_OK) {                  /* the cursors as they are at the cut */
        tk_cursors_refresh(log->dir, &log->cur);
        cut->ncursors = tk_cursors_list(&log->cur, NULL, 0);
        if (cut->ncursors && !(cut->cursors = tk_malloc(cut->ncursors * sizeof *cut->cursors)))
            return tk_fail(err, TK_NOMEM, "snapshot %s: out of memory", log->dir);
        cut->ncursors = tk_cursors_list(&log->cur, cut->cursors, cut->ncursors);
    }
    return rc;
}

tk_code tk_log_cut(tk_log *log, tk_cut *cut, tk_err *err) {
    tk_code rc;
    memset(cut, 0, sizeof *cut);
    /* Appends wait only while the cut point is taken, never for copying. */
    pthread_mutex_lock(&log->wmu);
    if (log->st.is_private) {
        rc = TK_OK;
        pthread_rwlock_wrlock(&log->rw);
        rc = refresh_private_locked(log, err);
        if (rc == TK_OK) rc = cut_locked(log, cut, err);
        pthread_rwlock_unlock(&log->rw);
    } else if ((rc = writer_enter(log, err)) == TK_OK) {
        load_index_tail(log);
        pthread_rwlock_wrlock(&log->rw);
        rc = cut_locked(log, cut, err);
        pthread_rwlock_unlock(&log->rw);
        writer_leave(log);
    }
    pthread_mutex_unlock(&log->wmu);
    if (rc != TK_OK) tk_cut_free(cut);
    return rc;
}

int tk_cut_changed(const tk_cut *cut) {
    return cut->state && !cut->state->is_private &&
           (tk_state_gen(cut->state) != cut->gen ||
            tk_state_start(cut->state) != cut->base_offset);
}

tk_code tk_log_same_dir(const tk_log *log, const char *dir, int *same, tk_err *err) {
    struct stat a, b;
    if (stat(log->dir, &a) < 0) return tk_fail_errno(err, errno, "stat %s", log->dir);
    if (stat(dir, &b) < 0) return tk_fail_errno(err, errno, "stat %s", dir);
    *same = a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    return TK_OK;
}

/* ------------------------------------------------------------------ */
/* Metrics                                                              */
/* ------------------------------------------------------------------ */

void tk_log_stats_get(tk_log *log, tk_log_stats *o) {
    const tk_state *st = &log->st;
    memset(o, 0, sizeof *o);
    o->appends = tk_state_counter(st, TK_C_APPENDS);
    o->records = tk_state_counter(st, TK_C_RECORDS);
    o->bytes = tk_state_counter(st, TK_C_BYTES);
    o->reads = tk_state_counter(st, TK_C_READS);
    o->fsyncs = tk_state_counter(st, TK_C_FSYNCS);
    o->fsync_us = tk_state_counter(st, TK_C_FSYNC_US);
    for (int k = 0; k < TK_FSYNC_BUCKETS; k++)
        o->fsync_buckets[k] = tk_state_counter(st, TK_C_FSYNC_BUCKET0 + k);
    o->rolls = tk_state_counter(st, TK_C_ROLLS);
    o->truncates = tk_state_counter(st, TK_C_TRUNCATES);
    o->segments_deleted = tk_state_counter(st, TK_C_SEGMENTS_DELETED);
    o->cursor_commits = tk_state_counter(st, TK_C_CURSOR_COMMITS);
    for (int c = 0; c < TK_CODE_COUNT; c++) o->errors[c] = tk_state_counter(st, TK_C_ERROR0 + c);
    o->base_offset = tk_log_base_offset(log);
    o->high_water_mark = tk_log_high_water_mark(log);
    o->synced = tk_state_synced(st);
    o->size = tk_log_size(log);
    o->num_segments = tk_log_num_segments(log);
    o->writers = tk_state_writer_count(st);
}

/* ------------------------------------------------------------------ */
/* Background jobs using the handle                                     */
/* ------------------------------------------------------------------ */

void tk_log_pin(tk_log *log) { __atomic_fetch_add(&log->pins, 1, __ATOMIC_ACQ_REL); }
void tk_log_unpin(tk_log *log) { __atomic_fetch_sub(&log->pins, 1, __ATOMIC_ACQ_REL); }
unsigned tk_log_users(const tk_log *log) { return __atomic_load_n(&log->pins, __ATOMIC_ACQUIRE); }
