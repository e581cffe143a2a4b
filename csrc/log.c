/*
 * log.c -- the log: a directory of segments, one writer, many readers.
 *
 * Concurrency inside a process.  Two locks:
 *
 *   wmu  (mutex)   serializes everything that writes: append, roll,
 *                  truncate, sync, index repair, and a read-only handle's
 *                  refresh.  Taken before rw, never after.
 *   rw   (rwlock)  guards the segment array and each segment's published
 *                  fields (next, size, max_ts, ix, log_fd).  Readers hold it
 *                  shared for a whole lookup-and-pread; writers hold it
 *                  exclusive only to publish.
 *
 * An append writes its bytes with pwrite holding only wmu -- past the
 * published size, where no reader looks -- then takes rw exclusively to
 * publish the new size, offsets and index entries.  So reads run alongside
 * the expensive part of an append.
 *
 * Across processes: the writer holds flock(<dir>/.lock).  Every append
 * reaches the kernel (pwrite) before it returns, which is why a SIGKILL
 * loses nothing acknowledged and why read-only handles in other processes
 * can follow the writer by re-scanning the active segment's tail
 * (tk_log_refresh).
 *
 * Crash states.  Bytes reach the .log before the matching index entries
 * (.timeindex first, then .index), so after a crash the index files may
 * lag the .log but never lead it; recovery (load_active) rescans from the
 * last index entry that checks out and truncates a torn tail.  Rolling
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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cut.h"
#include "error.h"
#include "fs.h"
#include "lock.h"
#include "restore.h"
#include "segment.h"

#define WRITE_CHUNK   (8u << 20)        /* frame at most this much per write */
#define ITER_CHUNK    (64u << 10)

struct tk_log {
    char *dir;
    tk_log_opts o;
    int lock_fd;
    pthread_mutex_t wmu;
    pthread_rwlock_t rw;
    tk_segment **segs;                  /* oldest first; last is active */
    size_t nsegs, cap;
    uint64_t gen;                       /* bumped when positions may move */
    unsigned char *wbuf;                /* writer's framing buffer */
    size_t wcap;
};

struct tk_iter {
    tk_log *log;
    int64_t next, end;
    uint64_t gen;
    size_t si;
    uint64_t pos;
    int positioned;
    tk_cursor c;
};

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

void tk_log_opts_init(tk_log_opts *o) {
    memset(o, 0, sizeof *o);
    o->max_segment_size = 64u << 20;
    o->index_interval_bytes = 4096;
    o->max_record_size = 16u << 20;
    o->sync = TK_SYNC_NONE;
}

static tk_code check_opts(const char *dir, const tk_log_opts *o, tk_err *err) {
    if (o->max_segment_size < 1 || o->max_segment_size > TK_MAX_SEGMENT_SIZE_LIMIT)
        return tk_fail(err, TK_INVALID, "open_log %s: max_segment_size %" PRIu64
                       " is outside 1 .. %u", dir, o->max_segment_size,
                       TK_MAX_SEGMENT_SIZE_LIMIT);
    if (o->index_interval_bytes < 1)
        return tk_fail(err, TK_INVALID, "open_log %s: index_interval_bytes must be >= 1", dir);
    if (o->max_record_size < 64 || o->max_record_size > TK_MAX_RECORD_SIZE_LIMIT)
        return tk_fail(err, TK_INVALID, "open_log %s: max_record_size %u is outside 64 .. %u",
                       dir, o->max_record_size, TK_MAX_RECORD_SIZE_LIMIT);
    if (o->sync != TK_SYNC_NONE && o->sync != TK_SYNC_ALWAYS)
        return tk_fail(err, TK_INVALID, "open_log %s: bad sync mode", dir);
    if (o->shared && o->readonly)
        return tk_fail(err, TK_INVALID, "open_log %s: shared and readonly exclude each other", dir);
    return TK_OK;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ */
/* The segment array                                                    */
/* ------------------------------------------------------------------ */

static tk_segment *active(const tk_log *log) { return log->segs[log->nsegs - 1]; }

static int push_segment(tk_log *log, tk_segment *s) {
    if (log->nsegs == log->cap) {
        size_t cap = log->cap ? log->cap * 2 : 16;
        tk_segment **p = realloc(log->segs, cap * sizeof *p);
        if (!p) return -1;
        log->segs = p;
        log->cap = cap;
    }
    log->segs[log->nsegs++] = s;
    return 0;
}

static void free_segments(tk_log *log) {
    for (size_t i = 0; i < log->nsegs; i++) tk_seg_free(log->segs[i]);
    log->nsegs = 0;
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
static int64_t base_locked(const tk_log *log) { return log->segs[0]->base; }
static int durable(const tk_log *log) { return log->o.sync == TK_SYNC_ALWAYS; }

/* ------------------------------------------------------------------ */
/* Opening: listing, loading sealed segments, recovering the active one */
/* ------------------------------------------------------------------ */

static int parse_base(const char *name, const char *ext, int64_t *base) {
    size_t n = strlen(name), e = strlen(ext);
    int64_t v = 0;
    if (n != 20 + e || strcmp(name + 20, ext) != 0) return 0;
    for (int i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9') return 0;
        if (v > (INT64_MAX - (name[i] - '0')) / 10) return 0;
        v = v * 10 + (name[i] - '0');
    }
    /* Offsets inside a segment are base + uint32: keep that from overflowing. */
    if (v > INT64_MAX - ((int64_t)1 << 33)) return 0;
    *base = v;
    return 1;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* What a crash can leave in a log directory: temp files of an atomic
 * replace or a copy-on-write, an in-place restore that never committed. */
static int is_leftover(const char *name) {
    size_t n = strlen(name);
    if (strncmp(name, ".restore-tmp-", 13) == 0) return 1;
    return n > 4 && strcmp(name + n - 4, ".tmp") == 0 &&
           (name[0] == '.' || (name[0] >= '0' && name[0] <= '9'));
}

/* Collects the base offsets of all .log files, sorted.  A writer also
 * removes what a crash can leave behind: temp files of an atomic replace
 * or a copy-on-write, and index files whose .log is gone. */
static tk_code list_bases(tk_log *log, int64_t **out, size_t *count, tk_err *err) {
    DIR *d = opendir(log->dir);
    struct dirent *de;
    int64_t *bases = NULL, base;
    size_t n = 0, cap = 0;
    if (!d) return tk_fail_errno(err, errno, "open %s", log->dir);
    while ((de = readdir(d)) != NULL) {
        if (!log->o.readonly && is_leftover(de->d_name)) {
            char path[PATH_MAX];
            if (tk_path_join(path, sizeof path, log->dir, de->d_name) == 0) tk_rmtree(path);
            continue;
        }
        if (!parse_base(de->d_name, ".log", &base)) continue;
        if (n == cap) {
            int64_t *p = realloc(bases, (cap = cap ? cap * 2 : 64) * sizeof *p);
            if (!p) { free(bases); closedir(d); return tk_fail(err, TK_NOMEM, "open %s: out of memory", log->dir); }
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

static void remove_orphan_indexes(tk_log *log, const int64_t *bases, size_t n) {
    DIR *d = opendir(log->dir);
    struct dirent *de;
    int64_t base;
    if (!d) return;
    while ((de = readdir(d)) != NULL) {
        if (!parse_base(de->d_name, ".index", &base) &&
            !parse_base(de->d_name, ".timeindex", &base))
            continue;
        if (!bsearch(&base, bases, n, sizeof *bases, cmp_i64))
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

static tk_code stat_log(const tk_log *log, const tk_segment *s, uint64_t *size, tk_err *err) {
    char path[PATH_MAX];
    struct stat st;
    if (tk_seg_path(path, sizeof path, log->dir, s->base, ".log") < 0 || stat(path, &st) < 0)
        return tk_fail_errno(err, errno, "stat %s", path);
    *size = (uint64_t)st.st_size;
    return TK_OK;
}

static tk_code load_sealed(tk_log *log, tk_segment *s, tk_err *err) {
    uint64_t size;
    int whole;
    tk_code rc = stat_log(log, s, &size, err);
    if (rc != TK_OK) return rc;
    s->size = size;
    if ((rc = tk_seg_load_index(log->dir, s, size, 1, &whole, err)) != TK_OK) return rc;
    if (whole) return TK_OK;
    if ((rc = tk_seg_rebuild(log->dir, s, log->o.index_interval_bytes, size, 0, err)) != TK_OK)
        return rc;
    if (log->o.readonly) return TK_OK;
    return tk_seg_write_index(log->dir, s, 1, durable(log), err);
}

/* Drops trailing index entries until the last one leads to an intact
 * record with the expected offset and a plausible timestamp. */
static tk_code verify_last_entry(tk_log *log, tk_segment *s, tk_cursor *c, uint64_t end,
                                 tk_err *err) {
    while (s->ix.n > 0) {
        const tk_ientry *e = &s->ix.e[s->ix.n - 1];
        const unsigned char *p;
        tk_rec_hdr h;
        tk_err scratch;
        tk_code rc = tk_seg_read_at(log->dir, s, c, e->pos, s->base + e->rel, end, &h, &p,
                                    &scratch);
        if (rc == TK_OK && h.timestamp <= e->max_ts) return TK_OK;
        if (rc != TK_OK && rc != TK_CORRUPT) { *err = scratch; return rc; }
        s->ix.n--;
    }
    return TK_OK;
}

/* Validates the active segment's tail (docs/FORMAT.md, "Recovery"). */
static tk_code load_active(tk_log *log, tk_segment *s, tk_err *err) {
    tk_cursor c = { .chunk = ITER_CHUNK };
    uint64_t size, pos;
    int whole;
    size_t loaded;
    tk_idxstate st = { 0, TK_TS_NONE };
    tk_code rc;

    if (log->o.readonly) {
        char path[PATH_MAX];
        struct stat sb;
        tk_seg_path(path, sizeof path, log->dir, s->base, ".log");
        if (stat(path, &sb) < 0 && errno == ENOENT) return TK_OK;   /* not created yet */
    } else if ((rc = tk_seg_open_writable(log->dir, s, err)) != TK_OK) {
        return rc;
    }
    if ((rc = stat_log(log, s, &size, err)) != TK_OK) return rc;
    if ((rc = tk_seg_load_index(log->dir, s, size, 0, &whole, err)) != TK_OK) return rc;
    loaded = s->ix.n;
    if ((rc = verify_last_entry(log, s, &c, size, err)) != TK_OK) goto out;
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
    s->ws = st;
    s->max_ts = st.max_ts;
    if (log->o.readonly) goto out;
    if (pos < size) {                                   /* torn or garbage tail */
        if ((rc = tk_seg_unshare(log->dir, s, durable(log), err)) != TK_OK) goto out;
        if (ftruncate(s->log_fd, (off_t)pos) < 0) {
            rc = tk_fail_errno(err, errno, "truncate %s/%020" PRId64 ".log", log->dir, s->base);
            goto out;
        }
    }
    if (!whole || s->ix.n != loaded)
        rc = tk_seg_write_index(log->dir, s, 0, durable(log), err);
out:
    tk_cursor_free(&c);
    return rc;
}

/* Loads the listed segments whose base is >= from: sealed ones as they
 * are, the last one with recovery. */
static tk_code load_listed(tk_log *log, const int64_t *bases, size_t n, int64_t from,
                           tk_err *err) {
    tk_code rc = TK_OK;
    for (size_t i = 0; i < n && rc == TK_OK; i++) {
        tk_segment *s;
        if (bases[i] < from) continue;
        if (!(s = tk_seg_new(bases[i])) || push_segment(log, s) < 0) {
            tk_seg_free(s);
            return tk_fail(err, TK_NOMEM, "open %s: out of memory", log->dir);
        }
        if (i + 1 < n) {
            s->next = bases[i + 1];
            rc = load_sealed(log, s, err);
        } else {
            rc = load_active(log, s, err);
        }
    }
    return rc;
}

static tk_code load_segments(tk_log *log, tk_err *err) {
    int64_t *bases = NULL;
    size_t n = 0;
    tk_code rc = list_bases(log, &bases, &n, err);
    if (rc != TK_OK) return rc;
    if (!log->o.readonly) remove_orphan_indexes(log, bases, n);
    if (n == 0) {
        tk_segment *s = NULL;
        free(bases);
        if (log->o.readonly) s = tk_seg_new(0);
        else if ((rc = tk_seg_create(log->dir, 0, durable(log), &s, err)) != TK_OK) return rc;
        if (!s || push_segment(log, s) < 0) {
            tk_seg_free(s);
            return tk_fail(err, TK_NOMEM, "open %s: out of memory", log->dir);
        }
        return TK_OK;
    }
    rc = load_listed(log, bases, n, INT64_MIN, err);
    free(bases);
    return rc;
}

static tk_code prepare_dir(tk_log *log, tk_err *err) {
    struct stat st;
    if (!log->o.readonly && tk_mkdir_p(log->dir, 0755) < 0)
        return tk_fail_errno(err, errno, "create %s", log->dir);
    if (stat(log->dir, &st) < 0) return tk_fail_errno(err, errno, "open %s", log->dir);
    if (!S_ISDIR(st.st_mode))
        return tk_fail(err, TK_INVALID, "open %s: not a directory", log->dir);
    if (log->o.readonly) {
        if (tk_restore_pending(log->dir))
            return tk_fail(err, TK_LOCKED, "open %s: an in-place restore is in progress; "
                           "open it as a writer to finish it", log->dir);
        return TK_OK;
    }
    tk_code rc = log->o.shared ? tk_dirlock_wait(log->dir, ".lock", &log->lock_fd, err)
                               : tk_dirlock_try(log->dir, ".lock", &log->lock_fd, err);
    if (rc == TK_OK && tk_restore_pending(log->dir))
        rc = tk_restore_apply(log->dir, err);          /* finish a crashed restore */
    return rc;
}

static void shared_leave(tk_log *log);

tk_code tk_log_open(const char *dir, const tk_log_opts *opts, tk_log **out, tk_err *err) {
    tk_log_opts defaults;
    tk_log *log;
    tk_code rc;
    size_t len;

    *out = NULL;
    if (!opts) { tk_log_opts_init(&defaults); opts = &defaults; }
    if (!dir || !*dir) return tk_fail(err, TK_INVALID, "open_log: empty directory name");
    if ((rc = check_opts(dir, opts, err)) != TK_OK) return rc;
    if (!(log = calloc(1, sizeof *log)))
        return tk_fail(err, TK_NOMEM, "open %s: out of memory", dir);
    log->o = *opts;
    log->lock_fd = -1;
    pthread_mutex_init(&log->wmu, NULL);
    pthread_rwlock_init(&log->rw, NULL);
    len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;       /* "a/b/" -> "a/b" */
    if (!(log->dir = strndup(dir, len))) {
        tk_log_close(log);
        return tk_fail(err, TK_NOMEM, "open %s: out of memory", dir);
    }
    if ((rc = prepare_dir(log, err)) != TK_OK || (rc = load_segments(log, err)) != TK_OK) {
        tk_log_close(log);
        return rc;
    }
    shared_leave(log);              /* a shared writer holds the lock only to write */
    *out = log;
    return TK_OK;
}

/* ------------------------------------------------------------------ */
/* Shared mode: several writer processes                                */
/* ------------------------------------------------------------------ */

/* Drops the segments from index k on and loads them again from disk, with
 * any that other writers added; a writer's recovery (load_active) runs on
 * the new active segment.  Caller holds wmu, rw exclusively and the lock. */
static tk_code reload_from(tk_log *log, size_t k, tk_err *err) {
    int64_t *bases = NULL, from = k < log->nsegs ? log->segs[k]->base : 0;
    size_t n = 0;
    tk_code rc;
    while (log->nsegs > k) tk_seg_free(log->segs[--log->nsegs]);
    log->gen++;
    if (k == 0) return load_segments(log, err);
    if ((rc = list_bases(log, &bases, &n, err)) != TK_OK) return rc;
    rc = load_listed(log, bases, n, from, err);
    free(bases);
    if (rc == TK_OK && log->nsegs == 0) rc = load_segments(log, err);
    return rc;
}

/* Brings this handle up to date with what other shared writers did since
 * it last held the lock: nothing, appends or rolls (reload the active
 * segment onwards), or a truncate below it (reload everything). */
static tk_code catch_up(tk_log *log, tk_err *err) {
    tk_segment *s = active(log);
    char path[PATH_MAX];
    struct stat st, fst;
    size_t k = log->nsegs - 1;
    tk_code rc;
    if (tk_seg_path(path, sizeof path, log->dir, s->base, ".log") < 0)
        return tk_fail_errno(err, ENAMETOOLONG, "open %s", log->dir);
    if (stat(path, &st) < 0) {
        k = 0;                                          /* truncated away */
    } else if (s->log_fd >= 0 && fstat(s->log_fd, &fst) == 0 && fst.st_ino == st.st_ino &&
               (uint64_t)st.st_size == s->size) {
        if (tk_seg_path(path, sizeof path, log->dir, s->next, ".log") < 0 ||
            stat(path, &st) < 0)
            return TK_OK;                               /* nobody else wrote */
    } else if ((uint64_t)st.st_size < s->size) {
        k = 0;
    }
    pthread_rwlock_wrlock(&log->rw);
    rc = reload_from(log, k, err);
    pthread_rwlock_unlock(&log->rw);
    return rc;
}

/* Called with wmu held, before a shared writer changes anything. */
static tk_code shared_enter(tk_log *log, tk_err *err) {
    tk_code rc;
    if (!log->o.shared) return TK_OK;
    if ((rc = tk_lockfd_wait(log->lock_fd, log->dir, err)) != TK_OK) return rc;
    if (tk_restore_pending(log->dir)) rc = tk_restore_apply(log->dir, err);
    if (rc == TK_OK) rc = catch_up(log, err);
    if (rc != TK_OK) shared_leave(log);
    return rc;
}

/* The lock file stays open between appends; only the lock is dropped. */
static void shared_leave(tk_log *log) {
    if (log->o.shared) tk_lockfd_unlock(log->lock_fd);
}

void tk_log_close(tk_log *log) {
    if (!log) return;
    free_segments(log);
    free(log->segs);
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

/* Makes the active segment's files private before writing (hard-link
 * safety, docs/FORMAT.md).  The cheap test runs on every append. */
static tk_code unshare_active(tk_log *log, tk_err *err) {
    tk_segment *s = active(log);
    tk_code rc;
    if (tk_link_count(s->log_fd) == 1 && tk_link_count(s->idx_fd) == 1 &&
        tk_link_count(s->tim_fd) == 1)
        return TK_OK;
    pthread_rwlock_wrlock(&log->rw);
    rc = tk_seg_unshare(log->dir, s, durable(log), err);
    log->gen++;
    pthread_rwlock_unlock(&log->rw);
    return rc;
}

static void remove_segment_files(const tk_log *log, int64_t base) {
    static const char *const ext[3] = { ".log", ".index", ".timeindex" };
    char path[PATH_MAX];
    for (int i = 0; i < 3; i++)        /* .log first: then the segment is gone */
        if (tk_seg_path(path, sizeof path, log->dir, base, ext[i]) == 0) unlink(path);
}

/* Seals the active segment and starts a new one at its next offset.
 *
 * The seal trailer is written before the new .log exists: a read-only
 * handle (and a snapshot taken through one) treats a segment as sealed as
 * soon as the next .log appears, and from then on the segment's files must
 * never change -- snapshots may have hard-linked them.  If the new segment
 * cannot be made, the trailer is cut off again and the old segment stays
 * active; no reader can have seen it sealed, since the next .log never
 * appeared. */
static tk_code roll(tk_log *log, tk_err *err) {
    tk_segment *old = active(log), *s = NULL;
    tk_code rc = tk_seg_seal(log->dir, old, durable(log), err);
    if (rc == TK_OK) rc = tk_seg_create(log->dir, old->next, durable(log), &s, err);
    if (rc == TK_OK) {
        int pushed;
        pthread_rwlock_wrlock(&log->rw);
        pushed = push_segment(log, s) == 0;
        pthread_rwlock_unlock(&log->rw);
        if (pushed) return TK_OK;
        rc = tk_fail(err, TK_NOMEM, "roll %s: out of memory", log->dir);
        tk_seg_free(s);
    }
    remove_segment_files(log, old->next);
    if (old->idx_fd < 0) {
        tk_err scratch;
        tk_seg_open_writable(log->dir, old, &scratch);
    }
    if (old->tim_fd >= 0 && ftruncate(old->tim_fd, (off_t)(old->ix.n * TK_TIDX_ENTRY)) < 0) {
        /* the next open sees an active .timeindex with a trailer and rebuilds it */
    }
    old->icrc_known = 0;
    return rc;
}

static int reserve_wbuf(tk_log *log, size_t need) {
    if (need <= log->wcap) return 0;
    size_t cap = log->wcap ? log->wcap : 4096;
    while (cap < need) cap *= 2;
    unsigned char *b = realloc(log->wbuf, cap);
    if (!b) return -1;
    log->wbuf = b;
    log->wcap = cap;
    return 0;
}

typedef struct pending {
    tk_index ix;            /* entries for this chunk (rel, pos, max_ts) */
    tk_idxstate ws;         /* writer state after the chunk */
} pending;

/* Frames recs[i..*j) into wbuf, stopping where the segment or the chunk
 * would overflow (but always taking at least one record). */
static tk_code frame_chunk(tk_log *log, tk_segment *s, const tk_rec_in *recs, size_t i,
                           size_t n, size_t *j, size_t *len, pending *pd, int64_t now,
                           tk_err *err) {
    size_t used = 0;
    pd->ws = s->ws;
    pd->ix.n = 0;
    for (*j = i; *j < n; (*j)++) {
        tk_rec_in r = recs[*j];
        size_t sz = (size_t)tk_rec_size(r.has_key ? r.key_len : 0, r.value_len);
        int64_t off = s->next + (int64_t)(*j - i);
        if (used > 0 && (s->size + used + sz > log->o.max_segment_size ||
                         used + sz > WRITE_CHUNK))
            break;
        if (reserve_wbuf(log, used + sz) < 0)
            return tk_fail(err, TK_NOMEM, "append to %s: out of memory", log->dir);
        if (r.timestamp < 0) r.timestamp = now;
        tk_rec_encode(log->wbuf + used, off, &r);
        if (tk_idxstate_step(&pd->ws, r.timestamp, sz, log->o.index_interval_bytes) &&
            tk_index_push(&pd->ix, (uint32_t)(off - s->base), (uint32_t)(s->size + used),
                          pd->ws.max_ts) < 0)
            return tk_fail(err, TK_NOMEM, "append to %s: out of memory", log->dir);
        used += sz;
    }
    *len = used;
    return TK_OK;
}

static tk_code write_failed(tk_log *log, const tk_segment *s, const char *ext, int e,
                            tk_err *err) {
    return tk_fail_errno(err, e, "append to %s/%020" PRId64 "%s", log->dir, s->base, ext);
}

/* Writes a framed chunk and its index entries; on failure every file is
 * cut back to where it was, so no torn record is left behind. */
static tk_code write_chunk(tk_log *log, tk_segment *s, size_t len, const pending *pd,
                           tk_err *err) {
    size_t n = pd->ix.n;
    uint64_t oi = (uint64_t)s->ix.n * TK_OIDX_ENTRY, ti = (uint64_t)s->ix.n * TK_TIDX_ENTRY;
    unsigned char ebuf[64 * TK_TIDX_ENTRY], *eb = ebuf;
    tk_code rc = TK_OK;

    if (tk_pwrite_all(s->log_fd, log->wbuf, len, s->size) < 0) {
        rc = write_failed(log, s, ".log", errno, err);
        goto undo;
    }
    if (n > 0) {
        if (n > 64 && !(eb = malloc(n * TK_TIDX_ENTRY))) {
            rc = tk_fail(err, TK_NOMEM, "append to %s: out of memory", log->dir);
            goto undo;
        }
        tk_index_encode_time(&pd->ix, 0, n, eb);
        if (tk_pwrite_all(s->tim_fd, eb, n * TK_TIDX_ENTRY, ti) < 0) {
            rc = write_failed(log, s, ".timeindex", errno, err);
            goto undo;
        }
        if (s->icrc_known) s->tim_crc = tk_crc32c(s->tim_crc, eb, n * TK_TIDX_ENTRY);
        tk_index_encode_off(&pd->ix, 0, n, eb);
        if (tk_pwrite_all(s->idx_fd, eb, n * TK_OIDX_ENTRY, oi) < 0) {
            s->icrc_known = 0;
            rc = write_failed(log, s, ".index", errno, err);
            goto undo;
        }
        if (s->icrc_known) {
            s->idx_crc = tk_crc32c(s->idx_crc, eb, n * TK_OIDX_ENTRY);
            s->idx_size += n * TK_OIDX_ENTRY;
            s->tim_size += n * TK_TIDX_ENTRY;
        }
    }
    if (durable(log) && (fdatasync(s->log_fd) < 0 ||
                         (n > 0 && (fdatasync(s->tim_fd) < 0 || fdatasync(s->idx_fd) < 0)))) {
        rc = write_failed(log, s, "", errno, err);
        goto undo;
    }
    if (eb != ebuf) free(eb);
    return TK_OK;
undo:
    if (eb != ebuf) free(eb);
    if (ftruncate(s->log_fd, (off_t)s->size) < 0 || ftruncate(s->tim_fd, (off_t)ti) < 0 ||
        ftruncate(s->idx_fd, (off_t)oi) < 0) {
        /* Recovery on the next open trims whatever is left. */
    }
    return rc;
}

static void publish_chunk(tk_log *log, tk_segment *s, size_t count, size_t len,
                          const pending *pd) {
    uint32_t crc = s->crc_known ? tk_crc32c(s->log_crc, log->wbuf, len) : 0;
    pthread_rwlock_wrlock(&log->rw);
    s->log_crc = crc;
    for (size_t k = 0; k < pd->ix.n; k++)
        if (tk_index_push(&s->ix, pd->ix.e[k].rel, pd->ix.e[k].pos, pd->ix.e[k].max_ts) < 0)
            break;      /* a missing in-memory entry only lengthens scans */
    s->next += (int64_t)count;
    s->size += len;
    s->max_ts = pd->ws.max_ts;
    s->ws = pd->ws;
    s->dirty = 1;
    pthread_rwlock_unlock(&log->rw);
}

static tk_code truncate_locked(tk_log *log, int64_t offset, tk_err *err);

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

tk_code tk_log_append(tk_log *log, const tk_rec_in *recs, size_t n, int64_t *first,
                      tk_err *err) {
    pending pd = { { NULL, 0, 0 }, { 0, 0 } };
    int64_t start, now = now_ms();
    size_t i = 0;
    tk_code rc;

    if (log->o.readonly)
        return tk_fail(err, TK_READONLY, "append to %s: log is open read-only", log->dir);
    if ((rc = check_batch(log, recs, n, err)) != TK_OK) return rc;
    pthread_mutex_lock(&log->wmu);
    if ((rc = shared_enter(log, err)) != TK_OK) {
        pthread_mutex_unlock(&log->wmu);
        return rc;
    }
    start = active(log)->next;
    rc = unshare_active(log, err);
    while (rc == TK_OK && i < n) {
        tk_segment *s = active(log);
        size_t j = i, len = 0;
        uint64_t first_size = tk_rec_size(recs[i].has_key ? recs[i].key_len : 0,
                                          recs[i].value_len);
        if (s->size > 0 && s->size + first_size > log->o.max_segment_size) {
            if ((rc = roll(log, err)) != TK_OK) break;
            s = active(log);
        }
        rc = frame_chunk(log, s, recs, i, n, &j, &len, &pd, now, err);
        if (rc == TK_OK) rc = write_chunk(log, s, len, &pd, err);
        if (rc == TK_OK) publish_chunk(log, s, j - i, len, &pd);
        i = j;
    }
    if (rc != TK_OK && active(log)->next > start) {
        tk_err scratch;                     /* all or nothing: drop the prefix */
        truncate_locked(log, start, &scratch);
    }
    shared_leave(log);
    pthread_mutex_unlock(&log->wmu);
    tk_index_free(&pd.ix);
    if (rc == TK_OK && first) *first = start;
    return rc;
}

/* ------------------------------------------------------------------ */
/* Truncating                                                           */
/* ------------------------------------------------------------------ */


/* Cuts segment s (now the active one) at offset, which is inside it or
 * one past its end.  Caller holds wmu and rw exclusively. */
static tk_code cut_segment(tk_log *log, tk_segment *s, int64_t offset, tk_err *err) {
    tk_cursor c = { .chunk = ITER_CHUNK };
    uint64_t pos = s->size, from;
    int64_t at;
    long k;
    tk_code rc = TK_OK;

    if (s->idx_fd < 0 && (rc = tk_seg_open_writable(log->dir, s, err)) != TK_OK) goto out;
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
    /* Copy only the part that stays if the .log is shared. */
    s->size = pos;
    if ((rc = tk_seg_unshare(log->dir, s, durable(log), err)) != TK_OK) goto out;
    if (ftruncate(s->log_fd, (off_t)pos) < 0) {
        rc = tk_fail_errno(err, errno, "truncate %s/%020" PRId64 ".log", log->dir, s->base);
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
    s->next = offset;
    s->max_ts = s->ws.max_ts;
    s->crc_known = 0;
    rc = tk_seg_write_index(log->dir, s, 0, durable(log), err);
    if (rc == TK_OK && durable(log)) rc = tk_seg_sync(log->dir, s, err);
out:
    tk_cursor_free(&c);
    return rc;
}

static tk_code truncate_locked(tk_log *log, int64_t offset, tk_err *err) {
    size_t k;
    tk_code rc;
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
    log->gen++;
    pthread_rwlock_unlock(&log->rw);
    return rc;
}

tk_code tk_log_truncate(tk_log *log, int64_t offset, tk_err *err) {
    tk_code rc = TK_OK;
    int64_t base, hwm;
    if (log->o.readonly)
        return tk_fail(err, TK_READONLY, "truncate %s: log is open read-only", log->dir);
    pthread_mutex_lock(&log->wmu);
    if ((rc = shared_enter(log, err)) != TK_OK) {
        pthread_mutex_unlock(&log->wmu);
        return rc;
    }
    base = log->segs[0]->base;
    hwm = active(log)->next;
    if (offset < base || offset > hwm)
        rc = tk_fail(err, TK_OUT_OF_RANGE, "truncate %s: offset %" PRId64
                     " is outside [%" PRId64 ", %" PRId64 "]", log->dir, offset, base, hwm);
    else if (offset < hwm)
        rc = truncate_locked(log, offset, err);
    shared_leave(log);
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Following a writer (read-only handles)                               */
/* ------------------------------------------------------------------ */

static tk_code reload(tk_log *log, tk_err *err) {
    free_segments(log);
    log->gen++;
    return load_segments(log, err);
}

/* Picks up records the writer appended to s; sets *reload_needed when the
 * .log changed under us in a way only a full reload can follow (the writer
 * truncated it). */
static tk_code follow_segment(tk_log *log, tk_segment *s, int *reload_needed, tk_err *err) {
    char path[PATH_MAX];
    struct stat st, fst;
    tk_cursor c = { .chunk = ITER_CHUNK };
    uint64_t pos = s->size;
    tk_code rc;

    if (tk_seg_path(path, sizeof path, log->dir, s->base, ".log") < 0 || stat(path, &st) < 0) {
        if (errno == ENOENT && s->next == s->base) return TK_OK;    /* not created yet */
        *reload_needed = 1;
        return TK_OK;
    }
    if ((uint64_t)st.st_size < s->size) { *reload_needed = 1; return TK_OK; }
    if (s->log_fd >= 0 && fstat(s->log_fd, &fst) == 0 && fst.st_ino != st.st_ino) {
        /* The writer replaced the file (copy-on-write): follow the name. */
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return tk_fail_errno(err, errno, "open %s", path);
        close(s->log_fd);
        s->log_fd = fd;
        log->gen++;
    }
    if ((uint64_t)st.st_size == s->size) return TK_OK;
    rc = tk_seg_scan(log->dir, s, &c, &pos, &s->next, &s->ws, log->o.index_interval_bytes,
                     (uint64_t)st.st_size, 1, err);
    if (pos != s->size) s->crc_known = 0;
    s->icrc_known = 0;          /* the writer has written index entries since */
    s->size = pos;
    s->max_ts = s->ws.max_ts;
    tk_cursor_free(&c);
    return rc;
}

static tk_code refresh_locked(tk_log *log, tk_err *err) {
    for (;;) {
        tk_segment *s = active(log);
        char path[PATH_MAX];
        struct stat st;
        int reload_needed = 0;
        tk_code rc = follow_segment(log, s, &reload_needed, err);
        if (rc != TK_OK) return rc;
        if (reload_needed) return reload(log, err);
        /* The writer rolled when a file named by our next offset exists. */
        if (s->next == s->base ||
            tk_seg_path(path, sizeof path, log->dir, s->next, ".log") < 0 ||
            stat(path, &st) < 0)
            return TK_OK;
        tk_segment *ns = tk_seg_new(s->next);
        if (!ns || push_segment(log, ns) < 0) {
            tk_seg_free(ns);
            return tk_fail(err, TK_NOMEM, "refresh %s: out of memory", log->dir);
        }
    }
}

tk_code tk_log_refresh(tk_log *log, tk_err *err) {
    tk_code rc;
    if (log->o.shared) {
        pthread_mutex_lock(&log->wmu);
        rc = shared_enter(log, err);
        shared_leave(log);
        pthread_mutex_unlock(&log->wmu);
        return rc;
    }
    if (!log->o.readonly) return TK_OK;
    pthread_mutex_lock(&log->wmu);
    pthread_rwlock_wrlock(&log->rw);
    rc = refresh_locked(log, err);
    pthread_rwlock_unlock(&log->rw);
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Reading                                                              */
/* ------------------------------------------------------------------ */

/* An index entry did not lead where it claimed: rebuild that segment's
 * index from its .log (and rewrite the files, for a writer). */
static tk_code repair_index(tk_log *log, int64_t offset, tk_err *err) {
    tk_code rc = TK_OK;
    pthread_mutex_lock(&log->wmu);
    pthread_rwlock_wrlock(&log->rw);
    if (offset >= base_locked(log) && offset < hwm_locked(log)) {
        size_t k = find_segment(log, offset);
        tk_segment *s = log->segs[k];
        int sealed = k + 1 < log->nsegs;
        rc = tk_seg_rebuild(log->dir, s, log->o.index_interval_bytes, s->size, !sealed, err);
        if (rc == TK_OK && !log->o.readonly)
            rc = tk_seg_write_index(log->dir, s, sealed, durable(log), err);
        log->gen++;
    }
    pthread_rwlock_unlock(&log->rw);
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

static tk_code out_of_range(const tk_log *log, const char *op, int64_t offset, int64_t base,
                            int64_t hwm, tk_err *err) {
    return tk_fail(err, TK_OUT_OF_RANGE, "%s %s: offset %" PRId64 " is outside [%" PRId64
                   ", %" PRId64 ")", op, log->dir, offset, base, hwm);
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

tk_code tk_log_read(tk_log *log, int64_t offset, tk_record *rec, tk_err *err) {
    int refreshed = 0, repaired = 0;
    for (;;) {
        tk_cursor c = { .buf = rec->buf, .cap = rec->cap,
                        .chunk = log->o.index_interval_bytes + 4096 };
        int64_t base, hwm;
        uint64_t pos;
        tk_segment *s;
        tk_rec_hdr h;
        const unsigned char *p;
        tk_code rc;

        pthread_rwlock_rdlock(&log->rw);
        base = base_locked(log);
        hwm = hwm_locked(log);
        if (offset < base || offset >= hwm) {
            pthread_rwlock_unlock(&log->rw);
            if ((log->o.readonly || log->o.shared) && !refreshed) {
                refreshed = 1;
                if ((rc = tk_log_refresh(log, err)) != TK_OK) return rc;
                continue;
            }
            return out_of_range(log, "read", offset, base, hwm, err);
        }
        s = log->segs[find_segment(log, offset)];
        rc = tk_seg_locate(log->dir, s, &c, offset, s->size, &pos, err);
        if (rc == TK_OK) rc = tk_seg_read_at(log->dir, s, &c, pos, offset, s->size, &h, &p, err);
        if (rc == TK_OK) fill_record(rec, &h, p);
        pthread_rwlock_unlock(&log->rw);
        rec->buf = c.buf;
        rec->cap = c.cap;
        if (rc == TK_STALE && !repaired) {
            repaired = 1;
            if ((rc = repair_index(log, offset, err)) != TK_OK) return rc;
            continue;
        }
        if (rc == TK_STALE)
            return tk_fail(err, TK_CORRUPT, "read %s: index lookup for offset %" PRId64
                           " failed twice", log->dir, offset);
        if (rc == TK_CORRUPT && err) {
            char tail[sizeof err->msg];
            snprintf(tail, sizeof tail, "%s", err->msg);
            tk_fail(err, TK_CORRUPT, "read offset %" PRId64 ": %s", offset, tail);
        }
        return rc;
    }
}

void tk_record_free(tk_record *rec) {
    free(rec->buf);
    memset(rec, 0, sizeof *rec);
}

tk_code tk_log_offset_for_time(tk_log *log, int64_t ts, int64_t *offset, tk_err *err) {
    tk_code rc;
    int repaired = 0;
    if ((rc = tk_log_refresh(log, err)) != TK_OK) return rc;
    for (;;) {
        tk_cursor c = { .chunk = log->o.index_interval_bytes + 4096 };
        int64_t stale_at = -1;
        pthread_rwlock_rdlock(&log->rw);
        *offset = hwm_locked(log);
        rc = TK_OK;
        for (size_t i = 0; i < log->nsegs; i++) {
            tk_segment *s = log->segs[i];
            if (s->next == s->base || s->max_ts == TK_TS_NONE || s->max_ts < ts) continue;
            rc = tk_seg_find_time(log->dir, s, &c, ts, s->size, offset, err);
            if (rc == TK_STALE) stale_at = s->base;
            /* A segment whose recorded largest timestamp promised more than
             * its records hold: look on in the next ones. */
            if (rc == TK_OK && *offset == s->next && i + 1 < log->nsegs) {
                *offset = hwm_locked(log);
                continue;
            }
            break;
        }
        pthread_rwlock_unlock(&log->rw);
        tk_cursor_free(&c);
        if (rc != TK_STALE) return rc;
        if (repaired++ || (rc = repair_index(log, stale_at, err)) != TK_OK)
            return rc == TK_STALE ? tk_fail(err, TK_CORRUPT, "offset_for_time %s: time index "
                                            "unusable", log->dir) : rc;
    }
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
    if (!(it = calloc(1, sizeof *it))) return tk_fail(err, TK_NOMEM, "records: out of memory");
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
    tk_cursor_reset(&it->c);
    it->gen = log->gen;
    it->positioned = 1;
    return tk_seg_locate(log->dir, s, &it->c, it->next, s->size, &it->pos, err);
}

tk_code tk_iter_next(tk_iter *it, tk_record *rec, int *done, tk_err *err) {
    tk_log *log = it->log;
    int repaired = 0;
    for (;;) {
        tk_segment *s;
        tk_rec_hdr h;
        const unsigned char *p;
        tk_code rc = TK_OK;

        pthread_rwlock_rdlock(&log->rw);
        if (it->end > hwm_locked(log)) it->end = hwm_locked(log);   /* truncated */
        if (it->next >= it->end) {
            pthread_rwlock_unlock(&log->rw);
            *done = 1;
            return TK_OK;
        }
        int fresh = !it->positioned || it->gen != log->gen;
        if (fresh) rc = iter_position(it, err);
        if (rc == TK_OK) {
            s = log->segs[it->si];
            while (it->next >= s->next && it->si + 1 < log->nsegs) {
                s = log->segs[++it->si];
                it->pos = 0;
            }
            rc = tk_seg_read_at(log->dir, s, &it->c, it->pos, it->next, s->size, &h, &p, err);
            /* Damage right before this record leaves the running position
             * on it, not on the record: the index knows where it is. */
            if (rc == TK_CORRUPT && !fresh) {
                uint64_t at;
                tk_err scratch;
                if (tk_seg_locate(log->dir, s, &it->c, it->next, s->size, &at, &scratch) == TK_OK &&
                    at != it->pos) {
                    it->pos = at;
                    rc = tk_seg_read_at(log->dir, s, &it->c, it->pos, it->next, s->size, &h, &p,
                                        err);
                }
            }
        }
        if (rc == TK_OK) {
            fill_record(rec, &h, p);
            it->pos += tk_rec_total(&h);
            it->next++;
        }
        pthread_rwlock_unlock(&log->rw);
        if (rc == TK_STALE && !repaired++) {
            it->positioned = 0;
            if ((rc = repair_index(log, it->next, err)) != TK_OK) return rc;
            continue;
        }
        if (rc == TK_STALE)
            rc = tk_fail(err, TK_CORRUPT, "records %s: index unusable at offset %" PRId64,
                         log->dir, it->next);
        *done = 0;
        return rc;
    }
}

void tk_iter_close(tk_iter *it) {
    if (!it) return;
    tk_cursor_free(&it->c);
    free(it);
}

/* ------------------------------------------------------------------ */
/* Flushing, syncing, accessors                                         */
/* ------------------------------------------------------------------ */

tk_code tk_log_flush(tk_log *log, tk_err *err) {
    (void)log; (void)err;
    return TK_OK;       /* every append already reached the kernel */
}

tk_code tk_log_sync(tk_log *log, tk_err *err) {
    tk_code rc = TK_OK;
    if (log->o.readonly) return TK_OK;
    pthread_mutex_lock(&log->wmu);
    for (size_t i = 0; i < log->nsegs && rc == TK_OK; i++)
        if (log->segs[i]->dirty || i + 1 == log->nsegs)
            rc = tk_seg_sync(log->dir, log->segs[i], err);
    if (rc == TK_OK && tk_fsync_dir(log->dir) < 0)
        rc = tk_fail_errno(err, errno, "fsync %s", log->dir);
    pthread_mutex_unlock(&log->wmu);
    return rc;
}

int64_t tk_log_high_water_mark(tk_log *log) {
    int64_t v;
    tk_log_refresh(log, NULL);
    pthread_rwlock_rdlock(&log->rw);
    v = hwm_locked(log);
    pthread_rwlock_unlock(&log->rw);
    return v;
}

int64_t tk_log_base_offset(tk_log *log) {
    int64_t v;
    pthread_rwlock_rdlock(&log->rw);
    v = base_locked(log);
    pthread_rwlock_unlock(&log->rw);
    return v;
}

size_t tk_log_num_segments(tk_log *log) {
    size_t v;
    tk_log_refresh(log, NULL);
    pthread_rwlock_rdlock(&log->rw);
    v = log->nsegs;
    pthread_rwlock_unlock(&log->rw);
    return v;
}

uint64_t tk_log_size(tk_log *log) {
    uint64_t v = 0;
    tk_log_refresh(log, NULL);
    pthread_rwlock_rdlock(&log->rw);
    for (size_t i = 0; i < log->nsegs; i++) v += log->segs[i]->size;
    pthread_rwlock_unlock(&log->rw);
    return v;
}

const char *tk_log_dir(const tk_log *log) { return log->dir; }
int tk_log_readonly(const tk_log *log) { return log->o.readonly; }

size_t tk_log_segments(tk_log *log, tk_segment_info *out, size_t cap) {
    size_t n;
    tk_log_refresh(log, NULL);
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
    cs->idx = malloc(cs->idx_len + 1);
    cs->tim = malloc(cs->tim_len + 1);
    if (!cs->idx || !cs->tim) return tk_fail(err, TK_NOMEM, "snapshot %s: out of memory", log->dir);
    tk_index_encode_off(&s->ix, 0, s->ix.n, cs->idx);
    tk_index_encode_time(&s->ix, 0, s->ix.n, cs->tim);
    return TK_OK;
}

static tk_code cut_locked(tk_log *log, tk_cut *cut, tk_err *err) {
    tk_code rc = TK_OK;
    if (!(cut->segs = calloc(log->nsegs, sizeof *cut->segs)) || !(cut->dir = strdup(log->dir)))
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
    return rc;
}

tk_code tk_log_cut(tk_log *log, tk_cut *cut, tk_err *err) {
    tk_code rc;
    memset(cut, 0, sizeof *cut);
    /* Appends wait only while the cut point is taken, never for copying. */
    pthread_mutex_lock(&log->wmu);
    if ((rc = shared_enter(log, err)) != TK_OK) {
        pthread_mutex_unlock(&log->wmu);
        return rc;
    }
    pthread_rwlock_wrlock(&log->rw);
    rc = log->o.readonly ? refresh_locked(log, err) : TK_OK;
    if (rc == TK_OK) rc = cut_locked(log, cut, err);
    pthread_rwlock_unlock(&log->rw);
    shared_leave(log);
    pthread_mutex_unlock(&log->wmu);
    if (rc != TK_OK) tk_cut_free(cut);
    return rc;
}
