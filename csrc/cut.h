/*
 * cut.h -- a consistent view of a log, for snapshots.
 *
 * tk_log_cut captures, while appends are held off, which records exist:
 * every segment's base and next offset, byte size and .log checksum.  For
 * the active segment it also keeps a descriptor of its .log (so the bytes
 * up to the captured size can be copied after the log is released, even if
 * the writer replaces the file meanwhile) and its index files encoded from
 * memory up to the cut.  Sealed segments are immutable, so their files can
 * be linked by name afterwards.
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

typedef struct tk_cut {
    char *dir;                  /* the log directory */
    tk_cut_seg *segs;
    size_t n;
    int64_t base_offset, high_water_mark;
} tk_cut;

tk_code tk_log_cut(tk_log *log, tk_cut *cut, tk_err *err);
void tk_cut_free(tk_cut *cut);

#endif
