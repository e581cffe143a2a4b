/*
 * takhin.h -- the public C interface of the takhin engine.
 *
 * takhin is a Kafka-style segmented commit log.  A log is a directory of
 * segments; each segment is three files named by its base offset:
 *
 *     00000000000000000000.log        framed records (see docs/FORMAT.md)
 *     00000000000000000000.index      sparse offset -> position index
 *     00000000000000000000.timeindex  sparse max-timestamp -> offset index
 *
 * Calling sequence:
 *
 *     tk_log_opts o;  tk_log *log;  tk_err e;
 *     tk_log_opts_init(&o);
 *     if (tk_log_open("/data/log", &o, &log, &e) != TK_OK)
 *         fprintf(stderr, "%s\n", e.msg);
 *     tk_log_append(log, recs, n, &first, &e);
 *     tk_log_read(log, offset, &rec, &e);
 *     tk_log_close(log);
 *
 * Every function that can fail returns a tk_code (TK_OK == 0) and, when
 * given a tk_err, fills it with the code, the errno involved (0 if none) and
 * a message that names the operation and the path or offset involved.
 *
 * Threads: a tk_log may be used from several threads at once.  Appends are
 * serialized; reads run alongside appends and each other.  tk_log_close must
 * not race with any other call on the same handle.
 *
 * Processes: a log has one exclusive writer (flock(LOCK_EX) on <dir>/.lock)
 * or any number of shared writers (LOCK_SH: nginx workers), never both --
 * the one that comes second gets TK_LOCKED naming the holders; and any
 * number of read-only handles.  All of them meet in <dir>/.state, a
 * memory-mapped page holding the layout every append publishes and the
 * lock every change to the files takes (csrc/state.h, docs/FORMAT.md).
 * Every append reaches the kernel before it returns, so a SIGKILL loses
 * nothing acknowledged and other processes see the record at once.
 */
#ifndef TAKHIN_H
#define TAKHIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* TK_API marks the engine's public functions.  In libtakhin they have
 * default visibility, so that only they are exported whatever flags the
 * build uses; inside the Lua module (built with TK_LUA_MODULE) none are:
 * the module exports luaopen_takhin_core alone. */
#if defined(TK_LUA_MODULE) && defined(__GNUC__)
#define TK_API __attribute__((visibility("hidden")))
#elif defined(__GNUC__)
#define TK_API __attribute__((visibility("default")))
#else
#define TK_API
#endif

#define TAKHIN_VERSION "0.2.0"
#define TK_FORMAT_VERSION 1           /* record magic byte, docs/FORMAT.md */

/* ------------------------------------------------------------------ */
/* Errors                                                               */
/* ------------------------------------------------------------------ */

typedef enum tk_code {
    TK_OK = 0,
    TK_NOT_FOUND,       /* no such log, snapshot, file */
    TK_OUT_OF_RANGE,    /* offset outside [base_offset, high_water_mark) */
    TK_LOCKED,          /* another writer holds the directory */
    TK_CORRUPT,         /* checksum or structure mismatch on disk */
    TK_EXISTS,
    TK_NOT_EMPTY,
    TK_TOO_SOON,
    TK_INVALID,         /* bad argument value (size limits, ids, ...) */
    TK_NOSPC,           /* ENOSPC / EDQUOT */
    TK_IO,              /* any other system error */
    TK_READONLY,        /* write attempted on a read-only handle */
    TK_NOMEM,
    TK_CONFLICT,        /* a concurrent change got there first (compare-and-set,
                           a log truncated under a snapshot being built) */
    TK_FULL,            /* the log's retention budget refuses the append */
    TK_CANCELED,        /* a background job was canceled */
    TK_CODE_COUNT
} tk_code;

typedef struct tk_err {
    tk_code code;
    int sys_errno;              /* errno of the failing call, 0 if none */
    char msg[512];
} tk_err;

/* Stable upper-case name of a code: "NOT_FOUND", "CORRUPT", ... */
TK_API const char *tk_code_name(tk_code code);

/* ------------------------------------------------------------------ */
/* Log                                                                  */
/* ------------------------------------------------------------------ */

/* "No value" for an optional int64_t option or result. */
#define TK_NONE INT64_MIN

typedef enum tk_sync {
    TK_SYNC_NONE = 0,               /* appends reach the kernel; sync() makes them durable */
    TK_SYNC_ALWAYS = 1,             /* fdatasync before append returns, shared by
                                       concurrent appenders (group commit) */
    TK_SYNC_INTERVAL = 2            /* an engine thread fdatasyncs every sync_interval_ms */
} tk_sync;

typedef enum tk_log_mode {
    TK_LOG_EXCLUSIVE = 0,           /* the one writer of the directory */
    TK_LOG_SHARED,                  /* one of several writer processes */
    TK_LOG_READONLY                 /* no writes; follows the writers */
} tk_log_mode;

typedef struct tk_log_opts {
    uint64_t max_segment_size;      /* roll when a record would not fit; default 64 MiB */
    uint32_t index_interval_bytes;  /* bytes between index entries; default 4096 */
    uint32_t max_record_size;       /* framed size limit; default 16 MiB */
    tk_sync sync;
    uint32_t sync_interval_ms;      /* TK_SYNC_INTERVAL: default 100 */
    tk_log_mode mode;
    uint32_t max_open_segments;     /* sealed segments whose .log stays open (an LRU);
                                       0: a default from RLIMIT_NOFILE */
    /* Retention (docs/API.md): whole sealed segments, oldest first, when a
     * segment rolls and on tk_log_apply_retention. */
    uint64_t retention_max_bytes;   /* 0: no byte budget */
    int64_t retention_max_age_ms;   /* TK_NONE: no age limit */
    int retention_discard_new;      /* past max_bytes, appends fail with TK_FULL
                                       instead of old segments being deleted */
    int retention_keep_uncommitted; /* never delete records at or above the lowest
                                       committed cursor (no cursor: nothing goes) */
} tk_log_opts;

#define TK_MAX_SEGMENT_SIZE_LIMIT  (1u << 30)  /* positions are uint32 */
#define TK_MAX_RECORD_SIZE_LIMIT   (1u << 30)

TK_API void tk_log_opts_init(tk_log_opts *opts);

typedef struct tk_log tk_log;

/* A record to append.  key == NULL with has_key == 0 is an absent key;
 * has_key == 1 with key_len == 0 is an empty key.  timestamp < 0 means
 * "now" (CLOCK_REALTIME, milliseconds). */
typedef struct tk_rec_in {
    const void *key;
    size_t key_len;
    int has_key;
    const void *value;
    size_t value_len;
    int64_t timestamp;
} tk_rec_in;

/* A record read back.  key and value point into buf, which the engine
 * grows as needed; release it with tk_record_free.  Zero-initialise before
 * first use. */
typedef struct tk_record {
    int64_t offset;
    int64_t timestamp;
    int has_key;
    const unsigned char *key;
    size_t key_len;
    const unsigned char *value;
    size_t value_len;
    unsigned char *buf;
    size_t cap;
} tk_record;

TK_API void tk_record_free(tk_record *rec);

/* Open (creating when not read-only) the log in dir. */
TK_API tk_code tk_log_open(const char *dir, const tk_log_opts *opts, tk_log **out,
                           tk_err *err);

/* Release everything; never fails.  NULL is accepted. */
TK_API void tk_log_close(tk_log *log);

/* Append n records as one batch; *first gets the first record's offset.
 * The batch is written with one write(2) per segment it touches. */
TK_API tk_code tk_log_append(tk_log *log, const tk_rec_in *recs, size_t n,
                             int64_t *first, tk_err *err);

TK_API tk_code tk_log_read(tk_log *log, int64_t offset, tk_record *rec, tk_err *err);

/* First offset whose timestamp is >= ts; base_offset when every record is
 * at or after ts, high_water_mark when none is. */
TK_API tk_code tk_log_offset_for_time(tk_log *log, int64_t ts, int64_t *offset,
                                      tk_err *err);

/* Remove every record at or after offset (base_offset <= offset <= hwm). */
TK_API tk_code tk_log_truncate(tk_log *log, int64_t offset, tk_err *err);

/* Every appended record already reached the kernel, so flush has nothing
 * to do.  sync makes all of it durable (fsync). */
TK_API tk_code tk_log_flush(tk_log *log, tk_err *err);
TK_API tk_code tk_log_sync(tk_log *log, tk_err *err);

/* Brings the handle's view of the files up to date with what other
 * handles and processes did.  Reads, iterators and tk_log_cut do it
 * themselves; the accessors below do not (they never touch the disk), so
 * a caller that wants another process's latest segments or size calls
 * this first.  Costs a few memory loads when nothing changed. */
TK_API tk_code tk_log_refresh(tk_log *log, tk_err *err);

/* Sleeps until the high water mark is above offset (1) or timeout_ms
 * passes (0; < 0 waits forever).  Woken by appends from any process. */
TK_API int tk_log_wait(tk_log *log, int64_t offset, int64_t timeout_ms);

/* Accessors: never an error.  The high water mark and the base offset are
 * the log's as published by its writers, a memory load -- except right
 * after a failure left the published layout marked stale (a truncate whose
 * undo failed, an in-place restore that could not republish): then the
 * first call rebuilds it from the files.  The others describe the
 * handle's view (see tk_log_refresh). */
TK_API int64_t tk_log_high_water_mark(tk_log *log);
TK_API int64_t tk_log_base_offset(tk_log *log);
TK_API size_t tk_log_num_segments(tk_log *log);
TK_API uint64_t tk_log_size(tk_log *log);             /* bytes of all .log files */
TK_API const char *tk_log_dir(const tk_log *log);
TK_API tk_log_mode tk_log_get_mode(const tk_log *log);

/* Background jobs (tk_snap_create_async) still using the handle: it must
 * not be closed before this is 0. */
TK_API unsigned tk_log_users(const tk_log *log);

typedef struct tk_segment_info {
    int64_t base_offset;
    int64_t next_offset;        /* one past its last record */
    uint64_t size;              /* bytes of the .log file */
    int active;
} tk_segment_info;

/* Copies up to cap entries into out and returns the segment count. */
TK_API size_t tk_log_segments(tk_log *log, tk_segment_info *out, size_t cap);

/* ------------------------------------------------------------------ */
/* Metrics                                                              */
/* ------------------------------------------------------------------ */

/* Upper bounds of the fsync latency histogram's buckets, in microseconds
 * (the last bucket counts everything slower). */
#define TK_FSYNC_BUCKETS 14
#define TK_FSYNC_BUCKET_BOUNDS_US { 100, 250, 500, 1000, 2500, 5000, 10000, 25000, \
                                    50000, 100000, 250000, 500000, 1000000, 0 }

typedef struct tk_log_stats {
    /* Counters: for the log, across every process that has it open
     * (they live in its shared state, and start again from zero when the
     * last handle closes -- as a restarted process's would). */
    uint64_t appends;               /* append calls that succeeded */
    uint64_t records;               /* records they appended */
    uint64_t bytes;                 /* framed bytes they appended */
    uint64_t reads;                 /* records read (read, iterators) */
    uint64_t fsyncs;                /* fdatasync/fsync calls made for durability */
    uint64_t fsync_us;              /* time spent in them */
    uint64_t fsync_buckets[TK_FSYNC_BUCKETS];   /* by latency, not cumulative */
    uint64_t rolls;                 /* segments sealed */
    uint64_t truncates;
    uint64_t segments_deleted;      /* by retention and delete_before */
    uint64_t cursor_commits;
    uint64_t errors[TK_CODE_COUNT]; /* failed calls by code */
    /* Gauges: the log as it is now. */
    int64_t base_offset, high_water_mark;
    int64_t synced;                 /* records below are known durable */
    uint64_t size;                  /* bytes of the .log files */
    uint64_t num_segments;
    uint64_t writers;               /* shared writers with the log open */
} tk_log_stats;

/* Fills out; never fails (a view not refreshed reports what it knows). */
TK_API void tk_log_stats_get(tk_log *log, tk_log_stats *out);

/* ------------------------------------------------------------------ */
/* Retention                                                            */
/* ------------------------------------------------------------------ */

/* Records below offset are gone from then on (OUT_OF_RANGE; also after a
 * reopen or a crash); whole segments below it are deleted.  offset must
 * be <= the high water mark; below the base offset nothing happens.
 * *base gets the new base offset. */
TK_API tk_code tk_log_delete_before(tk_log *log, int64_t offset, int64_t *base, tk_err *err);

/* Applies the retention options now; *deleted counts the segments. */
TK_API tk_code tk_log_apply_retention(tk_log *log, size_t *deleted, tk_err *err);

/* ------------------------------------------------------------------ */
/* Cursors: consumer offsets                                            */
/* ------------------------------------------------------------------ */

#define TK_CURSOR_NAME_MAX 128

typedef struct tk_cursor_info {
    char name[TK_CURSOR_NAME_MAX + 1];
    int64_t offset;                 /* the next offset its consumer reads */
} tk_cursor_info;

typedef struct tk_commit_opts {
    int has_expect;                 /* commit only when the stored value is expect... */
    int64_t expect;                 /* ... TK_NONE: only when there is none yet */
    int force;                      /* may move backwards */
} tk_commit_opts;

/* Stores offset (base_offset <= offset <= high water mark) as cursor
 * name's: INVALID when it would move backwards (unless force), CONFLICT
 * when expect does not hold.  Atomic, durable against SIGKILL (and power
 * loss with TK_SYNC_ALWAYS), shared by every process. */
TK_API tk_code tk_log_commit(tk_log *log, const char *name, int64_t offset,
                             const tk_commit_opts *opts, tk_err *err);

/* *found = 0 when name was never committed (or was deleted). */
TK_API tk_code tk_log_committed(tk_log *log, const char *name, int64_t *offset, int *found,
                                tk_err *err);

/* Every cursor: up to cap into out; returns how many there are. */
TK_API size_t tk_log_cursors(tk_log *log, tk_cursor_info *out, size_t cap);

/* NOT_FOUND when there is no such cursor. */
TK_API tk_code tk_log_delete_cursor(tk_log *log, const char *name, tk_err *err);

/* ------------------------------------------------------------------ */
/* Sequential reading                                                   */
/* ------------------------------------------------------------------ */

typedef struct tk_iter tk_iter;

/* Iterate [from, to); to < 0 means the high water mark at creation. */
TK_API tk_code tk_iter_open(tk_log *log, int64_t from, int64_t to, tk_iter **out,
                            tk_err *err);

/* TK_OK with *done == 0 and rec filled, or *done == 1 at the end.  rec's
 * key and value point into the iterator's buffer until the next call. */
TK_API tk_code tk_iter_next(tk_iter *it, tk_record *rec, int *done, tk_err *err);
TK_API void tk_iter_close(tk_iter *it);

/* ------------------------------------------------------------------ */
/* Snapshots                                                            */
/* ------------------------------------------------------------------ */

/* A snapshot manager owns a directory of snapshots of one log (default
 * <log dir>/.snapshots).  Several managers, in several processes, may use
 * the same directory at once: metadata changes are serialized by
 * flock(<snapshot dir>/.lock).  See docs/FORMAT.md for the layout and
 * csrc/snapshot.c for the crash-safety protocol. */
typedef struct tk_snapmgr tk_snapmgr;

typedef enum tk_snap_mode { TK_SNAP_LINK = 0, TK_SNAP_COPY = 1 } tk_snap_mode;

#define TK_SNAP_ID_MAX 64
#define TK_SNAP_LABEL_MAX 256

typedef struct tk_snapshot {
    char id[TK_SNAP_ID_MAX];
    int64_t timestamp;              /* ms since the epoch, when taken */
    int64_t seq;                    /* creation order in its directory: larger is
                                       newer, whatever the clocks said; 0 for a
                                       snapshot made before takhin 0.2 */
    int64_t base_offset;
    int64_t high_water_mark;        /* holds records [base_offset, high_water_mark) */
    uint64_t total_size;            /* bytes of its files, index files included */
    size_t num_segments;
    int64_t *segment_offsets;       /* base offset of each segment (malloc'd) */
    char label[TK_SNAP_LABEL_MAX];
    tk_snap_mode mode;              /* TK_SNAP_COPY when no file was linked */
    int damaged;                    /* its manifest cannot be read: only id,
                                       timestamp (from the id), total_size and
                                       path are known; restore/verify say CORRUPT */
} tk_snapshot;

TK_API void tk_snapshot_free(tk_snapshot *snap);
TK_API void tk_snapshot_list_free(tk_snapshot *snaps, size_t n);

/* dir may be NULL for the default.  INVALID when dir is the log's own
 * directory. */
TK_API tk_code tk_snapmgr_open(const char *log_dir, const char *dir, tk_snap_mode mode,
                               tk_snapmgr **out, tk_err *err);
TK_API void tk_snapmgr_close(tk_snapmgr *mgr);
TK_API const char *tk_snapmgr_dir(const tk_snapmgr *mgr);

/* The directory of snapshot id (whether or not it exists) into out. */
TK_API tk_code tk_snap_path(const tk_snapmgr *mgr, const char *id, char *out, size_t cap,
                            tk_err *err);

typedef void (*tk_progress_fn)(void *ud, uint64_t done, uint64_t total);

typedef struct tk_create_opts {
    int64_t min_interval_ms;        /* TOO_SOON when the newest snapshot is younger;
                                       < 0: no check */
    const char *label;              /* optional; UTF-8 */
    tk_progress_fn progress;        /* optional: bytes placed so far (on the
                                       calling thread) */
    void *progress_ud;
    unsigned threads;               /* copies of sealed segments at once; 0: a CPU each
                                       (a job: one CPU fewer) */
} tk_create_opts;

TK_API void tk_create_opts_init(tk_create_opts *opts);

/* Snapshots log (a writer or a read-only handle of the manager's log;
 * INVALID for a handle of another log).  Either the snapshot verifies, or
 * the call fails: CONFLICT when the log was truncated or restored while
 * the snapshot was being built, three times in a row. */
TK_API tk_code tk_snap_create(tk_snapmgr *mgr, tk_log *log, const tk_create_opts *opts,
                              tk_snapshot *out, tk_err *err);

typedef struct tk_restore_opts {
    int replace;                    /* restore into an existing log, in place */
    int64_t upto_offset;            /* TK_NONE: all; else keep offsets < upto_offset */
    int64_t upto_timestamp;         /* TK_NONE: all; else keep records up to the first
                                       one with timestamp > upto_timestamp */
    tk_progress_fn progress;
    void *progress_ud;
    unsigned threads;               /* files checked and placed at once; 0: a CPU each
                                       (a job: one CPU fewer) */
} tk_restore_opts;

TK_API void tk_restore_opts_init(tk_restore_opts *opts);

TK_API tk_code tk_snap_restore(tk_snapmgr *mgr, const char *id, const char *target,
                               const tk_restore_opts *opts, tk_err *err);

/* Newest first: in creation order (seq), so a clock stepped back never
 * makes an old snapshot look newest. */
TK_API tk_code tk_snap_list(tk_snapmgr *mgr, tk_snapshot **out, size_t *n, tk_err *err);
TK_API tk_code tk_snap_get(tk_snapmgr *mgr, const char *id, tk_snapshot *out, tk_err *err);
TK_API tk_code tk_snap_delete(tk_snapmgr *mgr, const char *id, tk_err *err);

/* Deletes the given snapshots in one metadata update; unknown ids are
 * skipped.  *deleted counts what was removed. */
TK_API tk_code tk_snap_delete_many(tk_snapmgr *mgr, const char *const *ids, size_t n,
                                   size_t *deleted, tk_err *err);

typedef struct tk_verify_opts {
    tk_progress_fn progress;
    void *progress_ud;
    unsigned threads;               /* files checked at once; 0: a CPU each
                                       (a job: one CPU fewer) */
} tk_verify_opts;

/* Re-reads every file and compares size and CRC32C with the manifest;
 * CORRUPT names the first file (in the manifest's order) that differs.
 * opts may be NULL. */
TK_API tk_code tk_snap_verify(tk_snapmgr *mgr, const char *id, const tk_verify_opts *opts,
                              tk_err *err);

/* Count and age rules; max_snapshots 0 and retention_ms < 0 turn a rule
 * off.  Age is measured from the newest snapshot, which is always kept.
 * Damaged snapshots are always deleted. */
TK_API tk_code tk_snap_cleanup(tk_snapmgr *mgr, size_t max_snapshots, int64_t retention_ms,
                               size_t *deleted, tk_err *err);

/* Sum of total_size over all snapshots. */
TK_API tk_code tk_snap_total_size(tk_snapmgr *mgr, uint64_t *size, tk_err *err);

/* INVALID unless id is a plausible snapshot id (no '/', no "..", ...). */
TK_API tk_code tk_snap_check_id(const char *id, tk_err *err);

/* Export and import (csrc/transfer.c; docs/FORMAT.md, "The archive"): a
 * snapshot as one stream -- a POSIX tar archive, manifest.json first, the
 * whole stream zstd-compressed on request -- for files, pipes, ssh, age,
 * restic.  Memory stays bounded whatever the snapshot's size.  Neither
 * touches anything but the descriptor, the manager's directory and the
 * callbacks, so either can run on a thread of its own; cancel, asked
 * between files and between blocks of at most 1 MiB, stops it with
 * TK_CANCELED (an import then leaves nothing behind). */
typedef enum tk_compress { TK_COMPRESS_NONE = 0, TK_COMPRESS_ZSTD = 1 } tk_compress;

/* Nonzero: stop.  Called on the thread doing the work. */
typedef int (*tk_cancel_fn)(void *ud);

typedef struct tk_export_opts {
    const char *since;              /* NULL: every file.  Else an incremental archive:
                                       only the files snapshot since does not hold
                                       (same name, size and CRC32C); importing it
                                       needs since in the target manager */
    tk_compress compress;
    int level;                      /* zstd level 1..19; 0: 3.  INVALID without zstd */
    const char *name;               /* optional: the destination, for messages */
    tk_progress_fn progress;        /* bytes of file data written, of all to write */
    void *progress_ud;
    tk_cancel_fn cancel;
    void *cancel_ud;
    uint64_t *written;              /* optional: gets the bytes written to fd */
} tk_export_opts;

typedef struct tk_import_opts {
    const char *name;               /* optional: the source, for messages */
    tk_progress_fn progress;        /* bytes of the snapshot's files in place, of all */
    void *progress_ud;
    tk_cancel_fn cancel;
    void *cancel_ud;
} tk_import_opts;

TK_API void tk_export_opts_init(tk_export_opts *opts);
TK_API void tk_import_opts_init(tk_import_opts *opts);

/* Writes snapshot id as an archive to fd (from its current position; fd
 * is not closed).  Every file is checked against the manifest's size and
 * CRC32C as it is read: CORRUPT, and the archive is left unfinished, when
 * one differs.  opts may be NULL. */
TK_API tk_code tk_snap_export(tk_snapmgr *mgr, const char *id, int fd,
                              const tk_export_opts *opts, tk_err *err);

/* The same into the file path, replaced atomically (written as
 * <path>.tmp, fsynced, renamed).  A path that is not a regular file
 * (/dev/null, a FIFO) is written to directly. */
TK_API tk_code tk_snap_export_file(tk_snapmgr *mgr, const char *id, const char *path,
                                   const tk_export_opts *opts, tk_err *err);

/* Reads an archive from fd to its end (zstd is recognized by its magic
 * number) and adds the snapshot to mgr under its own id: EXISTS when it
 * is already there, NOT_FOUND (naming it) when the archive is incremental
 * and its base is not there.  Every file's size and CRC32C and the
 * manifest's consistency are checked first; a damaged or hostile archive
 * is CORRUPT or INVALID and leaves nothing behind.  *out (may be NULL)
 * gets the snapshot's record; free it with tk_snapshot_free. */
TK_API tk_code tk_snap_import(tk_snapmgr *mgr, int fd, tk_snapshot *out, tk_err *err);
TK_API tk_code tk_snap_import_ex(tk_snapmgr *mgr, int fd, const tk_import_opts *opts,
                                 tk_snapshot *out, tk_err *err);
TK_API tk_code tk_snap_import_file(tk_snapmgr *mgr, const char *path,
                                   const tk_import_opts *opts, tk_snapshot *out, tk_err *err);

/* ------------------------------------------------------------------ */
/* Background jobs                                                      */
/* ------------------------------------------------------------------ */

/* The _async forms start the operation and return a job at once -- after
 * what must happen under the log's lock (a create's cut).  The work runs
 * on an engine thread (the bulk of a create, restore or verify on threads
 * at nice 19, so that a thread serving requests gets the CPU first; the
 * steps that take locks at the caller's priority).  Progress callbacks are
 * not called (tk_job_progress reports bytes; for a delete or cleanup,
 * snapshots).
 * Closing the manager cancels its jobs and waits for them; the log given
 * to tk_snap_create_async must stay open until the job is done.  A
 * canceled job fails with TK_CANCELED and leaves nothing half made. */
typedef struct tk_job tk_job;

TK_API tk_code tk_snap_create_async(tk_snapmgr *mgr, tk_log *log, const tk_create_opts *opts,
                                    tk_job **job, tk_err *err);
TK_API tk_code tk_snap_restore_async(tk_snapmgr *mgr, const char *id, const char *target,
                                     const tk_restore_opts *opts, tk_job **job, tk_err *err);
TK_API tk_code tk_snap_verify_async(tk_snapmgr *mgr, const char *id,
                                    const tk_verify_opts *opts, tk_job **job, tk_err *err);
TK_API tk_code tk_snap_cleanup_async(tk_snapmgr *mgr, size_t max_snapshots,
                                     int64_t retention_ms, tk_job **job, tk_err *err);
/* path non-NULL: to (from) that file, else the descriptor fd, which the
 * caller keeps open until the job is done.  The options' progress and
 * cancel are the job's own (tk_job_progress, tk_job_cancel); the job's
 * result is the bytes written (tk_job_count) for an export, the snapshot
 * (tk_job_snapshot) for an import. */
TK_API tk_code tk_snap_export_async(tk_snapmgr *mgr, const char *id, int fd, const char *path,
                                    const tk_export_opts *opts, tk_job **job, tk_err *err);
TK_API tk_code tk_snap_import_async(tk_snapmgr *mgr, int fd, const char *path,
                                    const tk_import_opts *opts, tk_job **job, tk_err *err);
TK_API tk_code tk_snap_delete_async(tk_snapmgr *mgr, const char *id, tk_job **job, tk_err *err);
TK_API tk_code tk_snap_delete_many_async(tk_snapmgr *mgr, const char *const *ids, size_t n,
                                         tk_job **job, tk_err *err);

TK_API const char *tk_job_kind(const tk_job *job);   /* "create", "verify", ... */
TK_API int tk_job_done(tk_job *job);                  /* never blocks */
TK_API void tk_job_progress(tk_job *job, uint64_t *done, uint64_t *total);
/* 1 when the job is done, 0 when timeout_ms passed first (< 0: wait). */
TK_API int tk_job_wait(tk_job *job, int64_t timeout_ms);
/* Waits, then: what the synchronous call would have returned. */
TK_API tk_code tk_job_result(tk_job *job, tk_err *err);
/* A create's snapshot (copied into out, with its directory in path): 1,
 * or 0 for other jobs or a failed one. */
TK_API int tk_job_snapshot(tk_job *job, tk_snapshot *out, char *path, size_t cap);
TK_API size_t tk_job_count(const tk_job *job);        /* cleanup: snapshots deleted */
TK_API void tk_job_cancel(tk_job *job);
/* Cancels if need be, waits for the thread, frees.  NULL is accepted. */
TK_API void tk_job_free(tk_job *job);

/* ------------------------------------------------------------------ */
/* Checksums                                                            */
/* ------------------------------------------------------------------ */

TK_API uint32_t tk_crc32c(uint32_t crc, const void *buf, size_t len);
TK_API uint32_t tk_crc32c_sw(uint32_t crc, const void *buf, size_t len);
TK_API int tk_crc32c_hw_available(void);

#ifdef __cplusplus
}
#endif
#endif
