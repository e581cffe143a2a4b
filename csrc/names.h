/*
 * names.h -- every name takhin gives a file or directory on disk, and the
 * parsing of those names (docs/FORMAT.md).  A new kind of file gets its
 * name here and nowhere else.
 *
 * In a log directory:
 *
 *     00000000000000000000.log      a segment: base offset, 20 digits, and
 *     00000000000000000000.index    one of the three extensions
 *     00000000000000000000.timeindex
 *     .lock                         the writer lock (flock)
 *     .state                        the shared state (memory-mapped)
 *     .cursors                      consumer offsets
 *     .start                        the log start offset (delete_before)
 *     .restore-tmp-<rand>/          an in-place restore being built
 *     .restore-ready/               ... committed, being applied
 *     .<name>.tmp                   an atomic replace or copy in progress
 *
 * In a snapshot directory:
 *
 *     .lock  .seq  snapshots.json  snapshot-<id>/manifest.json  .tmp-<id>/  .del-<id>/
 */
#ifndef TK_NAMES_H
#define TK_NAMES_H

#include <stddef.h>
#include <inttypes.h>
#include <stdint.h>

#include "takhin.h"

/* The three files of a segment, in the order a reader needs them. */
typedef enum tk_ext { TK_EXT_LOG = 0, TK_EXT_INDEX = 1, TK_EXT_TIMEINDEX = 2 } tk_ext;
#define TK_EXT_COUNT 3

extern const char *const tk_ext_name[TK_EXT_COUNT];    /* ".log", ".index", ".timeindex" */

#define TK_SEG_NAME_MAX 32          /* "<20 digits>.timeindex" and the NUL */

/* For messages that name a segment's .log without building its path:
 * printf(TK_SEG_LOG_FMT, dir, base). */
#define TK_SEG_LOG_FMT "%s/%020" PRId64 ".log"

/* Log directory entries. */
#define TK_LOCK_FILE      ".lock"
#define TK_STATE_FILE     ".state"
#define TK_CURSORS_FILE   ".cursors"
#define TK_START_FILE     ".start"
#define TK_RESTORE_READY  ".restore-ready"
#define TK_RESTORE_TMP    ".restore-tmp-"
#define TK_RESTORE_LIST   "restore.list"
#define TK_TMP_SUFFIX     ".tmp"

/* Snapshot directory entries. */
#define TK_CATALOG_FILE   "snapshots.json"
#define TK_MANIFEST_FILE  "manifest.json"
#define TK_SNAP_PREFIX    "snapshot-"
#define TK_SNAP_TMP       ".tmp-"
#define TK_SNAP_DEL       ".del-"
#define TK_SNAP_SEQ_FILE  ".seq"
#define TK_SNAP_DEFAULT_DIR ".snapshots"

/* In an incremental snapshot archive (docs/FORMAT.md, the archive). */
#define TK_ARC_SINCE_FILE "since.json"

/* "<20 digits><ext>" for a base offset; 0 or -1 (ENAMETOOLONG). */
int tk_seg_name(char *out, size_t cap, int64_t base, tk_ext ext);

/* dir + "/" + tk_seg_name. */
int tk_seg_path(char *out, size_t cap, const char *dir, int64_t base, tk_ext ext);

/* 1 and *base, *ext set when name is a segment file name whose base
 * offset leaves room for the uint32 relative offsets of its records. */
int tk_parse_seg_name(const char *name, int64_t *base, tk_ext *ext);

/* 1 for a segment file name (any of the three extensions). */
int tk_is_segment_file(const char *name);

/* 1 for the files that make up a log's data: its segment files, .start
 * and .cursors (what an in-place restore replaces). */
int tk_is_log_data_file(const char *name);

/* What a crash can leave in a log directory and a writer removes: temp
 * files of an atomic replace or a copy-on-write, an in-place restore
 * that never committed. */
int tk_is_log_leftover(const char *name);

/* INVALID unless name is 1-128 bytes of [A-Za-z0-9._-] (a cursor). */
tk_code tk_cursor_check_name(const char *name, tk_err *err);

/* A snapshot's directory: <snapdir>/<prefix><id>[/<file>]. */
int tk_snapdir_path(char *out, size_t cap, const char *snapdir, const char *prefix,
                 const char *id, const char *file);

/* The sibling directory a restore into a new target builds in:
 * <parent>/.<name>.restore-<id>-<rand>. */
int tk_restore_tmp_path(char *out, size_t cap, const char *parent, const char *name,
                        const char *id, uint32_t rand);

#endif
