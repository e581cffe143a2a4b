/*
 * segment.h -- one segment: a .log with its .index and .timeindex.
 *
 * Locking is the log's business (log.c): fields marked "published" are
 * written only under the log's exclusive rwlock and read under its shared
 * one; "writer" fields belong to whoever holds the log's append mutex.
 */
#ifndef TK_SEGMENT_H
#define TK_SEGMENT_H

#include <stdint.h>
#include <sys/types.h>

#include "index.h"
#include "names.h"
#include "record.h"
#include "takhin.h"

#define TK_STALE ((tk_code)100)     /* internal: an index entry lied */

/* How many sealed segments keep their .log open (an LRU, as LevelDB's
 * table cache): `open` counts them, `tick` orders their last use. */
typedef struct tk_fdcache {
    unsigned open;          /* atomic */
    unsigned max;
    uint64_t tick;          /* atomic */
} tk_fdcache;

typedef struct tk_segment {
    int64_t base;           /* offset of the first record (file name) */
    int64_t next;           /* published: one past the last record (sealed: the
                               next segment's base) */
    int64_t held;           /* published: one past the last record the .log
                               holds; below next only when a segment is missing */
    uint64_t size;          /* published: bytes of valid records */
    int64_t max_ts;         /* published: largest timestamp, TK_TS_NONE if empty */
    tk_index ix;            /* published: a prefix of the index files' entries */
    uint64_t idx_n;         /* published: entries in the index files (active) */
    uint32_t log_crc;       /* published: CRC32C of .log bytes [0, size) ... */
    int crc_known;          /* ... when this is set (else computed on demand) */
    /* Size and CRC32C of the .index and .timeindex files as they are on
     * disk, when icrc_known: snapshots record a hard-linked sealed
     * segment's index files without reading them.  Written under wmu. */
    uint64_t idx_size, tim_size;
    uint32_t idx_crc, tim_crc;
    int icrc_known;
    int log_fd;             /* atomic; -1 until first needed */
    int writable;           /* log_fd is open read-write (a writer's active segment) */
    uint64_t serial;        /* new for every inode log_fd is opened read-write on
                               (watch.h: what a writer's watch is armed for) */
    int idx_fd, tim_fd;     /* writer's active segment only, else -1 */
    uint64_t used;          /* atomic: fd cache tick of the last use */
    tk_fdcache *cache;      /* counts log_fd while it is open; may be NULL */
    tk_idxstate ws;         /* writer: where the next index entry goes */
    int dirty;              /* writer: written since the last sync */
} tk_segment;

/* A window onto a segment's .log: the bytes last read, reused between calls. */
typedef struct tk_window {
    unsigned char *buf;
    size_t cap, len;
    size_t chunk;           /* bytes to read ahead */
    uint64_t at;            /* file position of buf[0] */
    const tk_segment *seg;  /* whose bytes buf holds (NULL: none) */
} tk_window;

void tk_window_reset(tk_window *c);
void tk_window_free(tk_window *c);

tk_segment *tk_seg_new(int64_t base, tk_fdcache *cache);
void tk_seg_free(tk_segment *s);

/* The .log descriptor, opened read-only on first use (thread-safe). */
tk_code tk_seg_fd(const char *dir, tk_segment *s, int *fd, tk_err *err);

/* Closes a sealed segment's .log descriptor (caller holds the log
 * exclusively: no reader is using it). */
void tk_seg_close_fd(tk_segment *s);

/* Loads both index files; *whole says whether they were fully valid.
 * sealed: expect the final .timeindex entry (sets max_ts and held from it). */
tk_code tk_seg_load_index(const char *dir, tk_segment *s, uint64_t log_size,
                          int sealed, int *whole, tk_err *err);

/* Scans records from pos (offset expect) while they are valid, up to end,
 * pushing index entries as the writer would have.  check_crc == 0 walks by
 * sound headers only (indexing a sealed segment around a damaged payload).
 * On return *pos / *expect are one past the last valid record. */
tk_code tk_seg_scan(const char *dir, tk_segment *s, tk_window *c, uint64_t *pos,
                    int64_t *expect, tk_idxstate *st, uint32_t interval,
                    uint64_t end, int check_crc, tk_err *err);

/* Makes log_crc known, reading the .log up to size if need be.  Caller
 * holds the log exclusively (or is the only user of s). */
tk_code tk_seg_ensure_crc(const char *dir, tk_segment *s, tk_err *err);

/* Loads the index entries [ix.n, n) a writer in another process added to
 * the active segment's files; stops quietly at the first that does not
 * check out (the in-memory index only ever is a prefix). */
tk_code tk_seg_load_index_tail(const char *dir, tk_segment *s, uint64_t n, tk_err *err);

/* Rebuilds the in-memory index from the whole .log (up to end).  check_crc
 * as for tk_seg_scan: the active segment is rebuilt the way recovery reads
 * it (CRCs checked), a sealed one by sound headers.  Sets held. */
tk_code tk_seg_rebuild(const char *dir, tk_segment *s, uint32_t interval,
                       uint64_t end, int check_crc, tk_err *err);

/* Byte position of `offset` (TK_STALE when an index entry is wrong). */
tk_code tk_seg_locate(const char *dir, tk_segment *s, tk_window *c, int64_t offset,
                      uint64_t end, uint64_t *pos, tk_err *err);

/* The record at pos, which must be offset `expect`, CRC checked. */
tk_code tk_seg_read_at(const char *dir, tk_segment *s, tk_window *c, uint64_t pos,
                       int64_t expect, uint64_t end, tk_rec_hdr *h,
                       const unsigned char **rec, tk_err *err);

/* The first record at or after offset `from` with timestamp >= ts: *offset
 * gets its offset, or s->next when there is none. */
tk_code tk_seg_find_time(const char *dir, tk_segment *s, tk_window *c, int64_t ts,
                         int64_t from, uint64_t end, int64_t *offset, tk_err *err);

/* ---- writer side ---- */

/* Creates the three files of a new, empty segment. */
tk_code tk_seg_create(const char *dir, int64_t base, int durable, tk_fdcache *cache,
                      tk_segment **out, tk_err *err);

/* Opens the .log read-write (caller holds the log exclusively: a
 * read-only descriptor is closed) and the index files for appending. */
tk_code tk_seg_open_writable(const char *dir, tk_segment *s, tk_err *err);

/* Opens only the index files for appending (the .log stays as it is). */
tk_code tk_seg_open_index_fds(const char *dir, tk_segment *s, tk_err *err);

/* Copy-on-write: if any of the segment's writable files has another hard
 * link, replace it by a private copy first (docs/FORMAT.md).  which: a
 * bit per tk_ext to check (TK_UNSHARE_ALL for all three). */
#define TK_UNSHARE_ALL 7u
tk_code tk_seg_unshare(const char *dir, tk_segment *s, unsigned which, int durable,
                       tk_err *err);

/* Rewrites both index files atomically from memory. */
tk_code tk_seg_write_index(const char *dir, tk_segment *s, int sealed, int durable,
                           tk_err *err);

/* Writes the final .timeindex entry and closes the index descriptors. */
tk_code tk_seg_seal(const char *dir, tk_segment *s, int durable, tk_err *err);

tk_code tk_seg_sync(const char *dir, tk_segment *s, tk_err *err);

#endif
