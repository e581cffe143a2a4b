/*
 * cut.h -- a consistent view of a log, for snapshots.
 *
 * tk_log_cut captures, while appends are held off, which records exist:
 * every segment's base and next offset, byte size and .log checksum.  For
 * the active segment it also keeps a descriptor of its .log (so the bytes
 * up to the captured size can be copied after the log is released, even if
 * the writer replaces the file meanwhile) and its index files encoded from
 * memory up to the cut.  Sealed segments are immutable, so their files can
 * be linked by name afterwards -- as long as nothing removed or replaced
 * them meanwhile (a truncate and new appends bring back the same names):
 * the cut keeps the log's generation, and tk_cut_changed says whether it
 * moved.
 */
#ifndef TK_CUT_H
#define TK_CUT_H

#include <stddef.h>
#include <stdint.h>

#include "takhin.h"

typedef struct tk_cut_seg {
    int64_t base, next;
    uint64_t size;              /* bytes of .log in the cut */
    uint32_t log_crc;           /* CRC32C of those bytes */
    int sealed;
    int icrc_known;             /* sealed: index file sizes and CRCs below are known */
    uint64_t idx_size, tim_size;
    uint32_t idx_crc, tim_crc;
    int log_fd;                 /* active only: a dup of its .log, else -1 */
    unsigned char *idx, *tim;   /* active only: .index / .timeindex bytes */
    size_t idx_len, tim_len;
} tk_cut_seg;

struct tk_state;

typedef struct tk_cut {
    char *dir;                  /* the log directory */
    tk_cut_seg *segs;
    size_t n;
    int64_t base_offset, high_water_mark;
    uint64_t gen;               /* the log's generation at the cut */
    const struct tk_state *state;   /* the log's shared state (the log stays open) */
    tk_cursor_info *cursors;    /* the cursors at the cut */
    size_t ncursors;
} tk_cut;

tk_code tk_log_cut(tk_log *log, tk_cut *cut, tk_err *err);
void tk_cut_free(tk_cut *cut);

/* 1 when the log was truncated, restored or had segments deleted
 * (delete_before, retention) since the cut: files linked by name since then may be other files than the
 * cut described. */
int tk_cut_changed(const tk_cut *cut);

/* A background job uses the handle (tk_log_users). */
void tk_log_pin(tk_log *log);
void tk_log_unpin(tk_log *log);

/* Whether dir is the log's directory (same device and inode). */
tk_code tk_log_same_dir(const tk_log *log, const char *dir, int *same, tk_err *err);

#endif
