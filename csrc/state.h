/*
 * state.h -- the log's shared state: <dir>/.state, one page that every
 * handle of a log maps (writers, shared writers, read-only followers, in
 * any process).  docs/FORMAT.md, "The shared state", documents every field.
 *
 * What it holds, and why it lives in shared memory:
 *
 *   - the layout: generation, log start offset, the active segment's base,
 *     size, next offset (the high water mark) and writer bookkeeping.
 *     Every append publishes it, so any handle learns what changed with a
 *     few memory loads instead of stat(2) calls, and high_water_mark() is
 *     a load.  The generation is bumped by every change that moves or
 *     replaces files under their names (truncate, in-place restore,
 *     delete_before, retention): a handle whose generation differs reloads
 *     its view of the files, so no handle ever trusts a stale one --
 *     (inode, size) is not enough, a truncate followed by appends can
 *     bring both back.  An odd generation means such a change is under
 *     way.
 *   - the write lock: a process-shared robust mutex.  Every change to the
 *     log's files happens under it, in any mode.  A process killed while
 *     holding it leaves it "owner died": the next locker repairs the log
 *     from its files before going on, so a crashed nginx worker never
 *     wedges the others.
 *   - a word followers sleep on (futex) and the counters behind metrics.
 *
 * It is derived data, never the only copy of anything: the first handle
 * to open a log (nobody else maps the file) rebuilds it from the segment
 * files, whatever it holds -- after a reboot, a crash, a copy of the
 * directory, or a file of another version.
 *
 * Who initializes.  Every handle holds flock(LOCK_SH) on .state for as
 * long as it is open.  An opener first tries LOCK_EX without waiting: when
 * it gets it nobody else has the file mapped, so it (re)initializes the
 * file, loads the log, publishes the layout and only then drops to
 * LOCK_SH.  Otherwise it waits for LOCK_SH -- that is, for any initializer
 * to finish -- and maps what is there.
 *
 * Publishing.  The layout is written under the mutex, inside a seqlock:
 * readers copy it without any lock and retry while the sequence is odd or
 * moved.  A writer that dies inside the seqlock leaves it odd; a reader
 * that finds it odd for long takes the mutex, which hands it the repair.
 *
 * When the file cannot be opened for writing and nobody maps it (a
 * read-only handle on a read-only filesystem), the handle keeps a private
 * copy instead and follows the log through the files (log.c).
 */
#ifndef TK_STATE_H
#define TK_STATE_H

#include <pthread.h>
#include <stdint.h>

#include "takhin.h"

#define TK_STATE_VERSION 2
#define TK_STATE_SIZE    4096u
#define TK_STATE_WRITERS 32         /* pid slots for shared writers */
#define TK_STATE_COUNTERS 96
#define TK_STATE_RESERVATIONS 16    /* shared appends under way at once */
#define TK_STATE_WCOUNTED 16        /* writer slots with append counters of their own */

/* The counters behind tk_log_stats, by index into tk_shared.counters. */
enum {
    TK_C_APPENDS, TK_C_RECORDS, TK_C_BYTES, TK_C_READS, TK_C_FSYNCS, TK_C_FSYNC_US,
    TK_C_ROLLS, TK_C_TRUNCATES, TK_C_SEGMENTS_DELETED, TK_C_CURSOR_COMMITS,
    TK_C_FSYNC_BUCKET0,                             /* TK_FSYNC_BUCKETS of them */
    TK_C_ERROR0 = TK_C_FSYNC_BUCKET0 + TK_FSYNC_BUCKETS,   /* TK_CODE_COUNT of them */
    TK_C_END = TK_C_ERROR0 + TK_CODE_COUNT
};

/* A consistent copy of the published fields. */
typedef struct tk_layout {
    uint64_t gen;           /* even: stable; odd: a truncate/restore/... is under way */
    int64_t start;          /* log start offset: first readable offset */
    int64_t active_base;    /* base offset of the active segment */
    int64_t next;           /* one past the last record: the high water mark */
    uint64_t size;          /* bytes of records in the active .log */
    uint64_t idx_n;         /* index entries of the active segment */
    uint64_t since;         /* record bytes since its last index entry */
    int64_t max_ts;         /* largest timestamp in the active segment */
    uint32_t log_crc;       /* CRC32C of the active .log's [0, size) */
    uint32_t idx_crc;       /* ... and of its index files' entries */
    uint32_t tim_crc;
    uint32_t flags;         /* TK_LAYOUT_* */
} tk_layout;

#define TK_LAYOUT_CRC     1u    /* log_crc is known */
#define TK_LAYOUT_ICRC    2u    /* idx_crc and tim_crc are known */
#define TK_LAYOUT_CHECKED 4u    /* a writer validated the files as published (a
                                   layout a reader built makes the next writer
                                   run recovery first) */

/* A shared append under way (tk_state_reserve): where it starts, and who
 * makes it.  Free when pid is 0. */
typedef struct __attribute__((aligned(64))) tk_reservation {   /* a line each */
    int64_t start;          /* its first offset */
    uint64_t pos;           /* where its bytes go in the active .log */
    uint64_t idx_n;         /* index entries of the segment before its own */
    int32_t pid;            /* who reserved it; 0: free */
    uint32_t state;         /* TK_RES_* */
    uint32_t wake;          /* its maker sleeps here for its turn (futex) ... */
    uint32_t sleeping;      /* ... and says so: a publisher wakes only the next */
} tk_reservation;

#define TK_RES_RESERVED 1u  /* its bytes may still be being written */
#define TK_RES_WRITTEN  2u  /* its bytes are in the files: it waits for its turn */
#define TK_RES_FAILED   3u  /* its write failed: it and every later one are voided */

/* The mapped file.  Fixed layout for one build: the header names the
 * version and the sizes that must agree. */
typedef struct tk_shared {
    char magic[8];                  /* "takhinST" */
    uint32_t version;               /* TK_STATE_VERSION */
    uint32_t size;                  /* TK_STATE_SIZE */
    uint32_t struct_size;           /* sizeof(tk_shared) */
    uint32_t mutex_size;            /* sizeof(pthread_mutex_t) */
    uint32_t ready;                 /* 1 once the initializer has published */
    uint32_t stale;                 /* 1: the next locker rebuilds the layout */
    uint64_t boot;                  /* random tag of this initialization (read by people) */
    uint32_t torn;                  /* under mu: a failed append whose undo failed may
                                       have left bytes past the active .log's published
                                       end; the next appender cuts them */
    uint32_t appending;             /* durable appenders between entering append and
                                       their group commit: a leader waits for them a
                                       moment (a hint; one killed leaves it high: the
                                       next leader it holds up a whole moment clears it) */
    uint64_t pad0[2];
    pthread_mutex_t mu __attribute__((aligned(64)));
    /* published under mu, read through the seqlock */
    uint64_t seq __attribute__((aligned(64)));
    uint64_t gen;
    int64_t start, active_base, next;
    uint64_t size_, idx_n, since;
    int64_t max_ts;
    uint32_t log_crc, idx_crc, tim_crc, flags;
    /* follow: appends bump `wake` and wake sleepers when there are some */
    uint32_t wake __attribute__((aligned(64)));
    uint32_t waiters;
    /* group commit (tk_state_group_commit): records below `synced` are
     * durable; `syncing` is the pid of the writer whose fdatasync is under
     * way, 0 when none; the others sleep on sync_wake. */
    int64_t synced __attribute__((aligned(64)));
    int64_t dir_synced;             /* newest segment whose directory entry is durable */
    int32_t syncing;
    uint32_t sync_wake, sync_waiters;
    uint32_t durable_writers;       /* handles with sync "always" or "interval": while
                                       there is one, a roll makes the sealed segment
                                       durable (an over-count after a crash only costs
                                       fsyncs) */
    /* Shared appends (log.c, "Shared appends"): reserved under mu from the
     * frontier, written outside it, published in the order reserved.  The
     * frontier is the layout's active segment as it will be once every
     * reservation is published; `turn` is the published next, stored after
     * the seqlock closes: the reservation starting there publishes next.
     * `epoch` moves when reservations are voided (one died or failed). */
    int64_t res_next __attribute__((aligned(64)));
    uint64_t res_size, res_idx_n, res_since;
    int64_t res_max_ts;
    uint32_t res_used;              /* a bit per taken slot of res[] */
    uint64_t res_gen;               /* moves with every publish under mu (what a
                                       reserving writer checked may have changed) */
    int64_t turn __attribute__((aligned(64)));     /* its own line: waiters spin on it */
    uint32_t epoch;
    uint32_t turn_wake, turn_waiters;
    uint32_t sleepers;              /* makers asleep for their turn, all slots */
    tk_reservation res[TK_STATE_RESERVATIONS] __attribute__((aligned(64)));
    int32_t writers[TK_STATE_WRITERS] __attribute__((aligned(64)));
    /* appends, records and bytes of the shared writers in the first
     * TK_STATE_WCOUNTED pid slots, a line each (two writers adding to one
     * line would pass it back and forth on every append); the counters
     * below hold everyone else's.  Never reset but with the file: a slot
     * taken over from a dead writer goes on from its sums. */
    struct { uint64_t c[3]; } __attribute__((aligned(64))) wcount[TK_STATE_WCOUNTED];
    uint64_t counters[TK_STATE_COUNTERS] __attribute__((aligned(64)));
} tk_shared;

typedef struct tk_state {
    tk_shared *sh;
    int fd;                 /* -1 when private */
    int is_private;         /* no file: this handle's own copy */
    int writable;           /* mapped read-write */
    int created;            /* this open initializes it: call tk_state_ready */
    uint64_t old_gen;       /* the generation the file held before */
    int slot;               /* our pid slot, -1 */
} tk_state;

/* Opens (creating) and maps <dir>/.state.  When st->created is set the
 * caller holds the file exclusively: it loads the log, then calls
 * tk_state_ready with the layout.  Falls back to a private copy when the
 * file cannot be created or written and nobody maps it. */
tk_code tk_state_open(const char *dir, tk_state *st, tk_err *err);

/* A private copy from the start: for a read-only handle on a directory
 * that holds no log yet, where creating .state would leave a file behind
 * in what may be a mistyped path. */
tk_code tk_state_open_private(tk_state *st, tk_err *err);
void tk_state_ready(tk_state *st, tk_layout *l);
void tk_state_close(tk_state *st);

/* The write lock.  *repair is set when the last holder died holding it
 * (or left the layout marked stale): the caller rebuilds the layout from
 * the files, publishes it with tk_state_repaired, and goes on. */
tk_code tk_state_lock(tk_state *st, const char *dir, int *repair, tk_err *err);
void tk_state_repaired(tk_state *st, tk_layout *l, int ok);
void tk_state_unlock(tk_state *st);

/* Copies the layout lock-free: 1, or 0 when that is not possible -- the
 * seqlock stayed odd (a writer died inside it, or is very slow) or the
 * layout is marked stale: then take the lock, which hands over the repair. */
int tk_state_try_read(const tk_state *st, tk_layout *l);

/* The torn flag (tk_shared.torn); caller holds the lock. */
static inline int tk_state_torn(const tk_state *st) { return st->sh->torn != 0; }
static inline void tk_state_set_torn(tk_state *st, int v) { st->sh->torn = v ? 1u : 0u; }

/* 1 while the seqlock is odd: a writer is inside it, or died there. */
int tk_state_seq_odd(const tk_state *st);

/* 1 while the published layout is marked stale (nobody rebuilt it yet). */
int tk_state_is_stale(const tk_state *st);

/* Makes the next locker rebuild the layout (caller holds the lock). */
void tk_state_set_stale(tk_state *st);

/* The layout, for a caller that holds the lock. */
void tk_state_copy(const tk_state *st, tk_layout *l);

/* Publishes l (caller holds the lock), waking followers when next moved. */
void tk_state_publish(tk_state *st, const tk_layout *l);

/* Marks a generation change under way (gen odd) / done (gen even): around
 * every change that removes or replaces segment files.  Caller holds the
 * lock; l->gen is updated. */
void tk_state_begin_change(tk_state *st, tk_layout *l);
void tk_state_end_change(tk_state *st, tk_layout *l);

int64_t tk_state_next(const tk_state *st);
int64_t tk_state_start(const tk_state *st);
uint64_t tk_state_gen(const tk_state *st);

/* Sleeps until next > offset or timeout_ms passes (< 0: forever): 1 when
 * next > offset, 0 on timeout.  A private state cannot be woken by other
 * processes: it naps briefly and returns -1, and the caller refreshes
 * from the files and asks again. */
int tk_state_wait(tk_state *st, int64_t offset, int64_t timeout_ms);

/* Group commit.  A durable append calls this after its records are
 * written and published, outside the lock: when `synced` is below end it
 * either becomes the leader -- sync(ud, &target) runs one fdatasync that
 * covers every record published when it started, and `synced` moves to
 * target -- or sleeps until a leader moves `synced`.  A leader that dies is
 * replaced.  Returns 0, or -1 with errno from the leader's own fsync. */
typedef int (*tk_sync_fn)(void *ud, int64_t *target);
int tk_state_group_commit(tk_state *st, int64_t end, tk_sync_fn sync, void *ud);

/* Shared appends (see log.c).  The frontier: the active segment's next,
 * size, idx_n, since and max_ts (only those fields of f) once every
 * reservation is published (caller holds the lock). */
void tk_state_frontier(const tk_state *st, tk_layout *f);

/* Moves with every publish made under the lock (tk_state_publish): while
 * it stays, the layout's generation, start, active segment and flags do
 * too.  Caller holds the lock. */
uint64_t tk_state_res_gen(const tk_state *st);

/* Reserves [f->next, after->next): records the reservation, moves the
 * frontier to `after` and returns its slot (-1 when every slot is taken:
 * the caller appends under the lock instead), with the epoch it belongs
 * to.  Caller holds the lock. */
int tk_state_reserve(tk_state *st, const tk_layout *f, const tk_layout *after, uint32_t *epoch);

/* The reservation's bytes are written (TK_RES_WRITTEN), or failed. */
void tk_state_reserved_done(tk_state *st, int slot, uint32_t state);

/* Waits for the turn of the reservation starting at `start`: 1 when it
 * is ours to publish, 0 when it was voided (epoch moved: append again),
 * -1 when the one before it is stuck -- its process died, or its write
 * failed: take the lock (writer_enter drains, voiding it and us). */
int tk_state_wait_turn(tk_state *st, int slot, int64_t start, uint32_t epoch);

/* Publishes l at our turn (no lock: nobody else may publish now), frees
 * the slot and passes the turn on. */
void tk_state_publish_turn(tk_state *st, int slot, const tk_layout *l);

/* Under the lock: waits until every reservation is published.  0: none
 * left; 1: the one at the turn is stuck (dead or failed, or the caller's
 * own, starting at `own`: one that gave up waiting and will append
 * again) -- *pos and *idx_n say where it starts (where the files must be
 * cut): call tk_state_void. */
int tk_state_drain(tk_state *st, int64_t own, uint64_t *pos, uint64_t *idx_n);

/* Under the lock: voids every reservation (epoch moves), waiting for
 * their live makers to finish writing (not one byte of theirs lands
 * after this returns).  The caller then cuts the files and calls
 * tk_state_voided. */
void tk_state_void(tk_state *st);

/* Under the lock, after the cut: the frontier back to the published
 * layout, every slot free. */
void tk_state_voided(tk_state *st);

/* A durable append starts (+1) or has written its records (-1). */
void tk_state_appending(tk_state *st, int delta);

/* Records below `to` are durable (a roll, an interval sync). */
void tk_state_synced_to(tk_state *st, int64_t to);
int64_t tk_state_synced(const tk_state *st);
int64_t tk_state_dir_synced(const tk_state *st);
void tk_state_dir_synced_to(tk_state *st, int64_t base);
void tk_state_durable_writer(tk_state *st, int delta);
uint32_t tk_state_durable_writers(const tk_state *st);

/* Counters (tk_log_stats): atomic adds, shared by every process. */
void tk_state_count(tk_state *st, int counter, uint64_t n);

/* An append of records records, bytes bytes: TK_C_APPENDS, TK_C_RECORDS
 * and TK_C_BYTES, in this writer's own line when it has one. */
void tk_state_count_append(tk_state *st, uint64_t records, uint64_t bytes);
uint64_t tk_state_counter(const tk_state *st, int counter);

/* Runs fdatasync (or fsync when full) on fd and counts it, with its
 * latency. */
int tk_state_fsync(tk_state *st, int fd, int full);

/* Shared writers: record our pid (for LOCKED messages) / forget it. */
void tk_state_add_writer(tk_state *st);
void tk_state_remove_writer(tk_state *st);

/* How many shared writers have the log open (live pid slots). */
uint64_t tk_state_writer_count(const tk_state *st);

/* The live pids of shared writers of dir, as "pid 1, pid 2" (best effort:
 * empty when nobody maps the state). */
void tk_state_describe_writers(const char *dir, char *out, size_t cap);

/* Whether process pid lives: kill(pid, 0), and not a zombie (/proc). */
int tk_pid_alive(long pid);

/* For an in-place restore done while no writer has the log open: marks
 * the layout stale and moves the generation, so that every read-only
 * handle reloads and the next locker rebuilds the layout. */
tk_code tk_state_invalidate(const char *dir, tk_err *err);

#endif
