/*
 * cursors.h -- consumer offsets: <dir>/.cursors (docs/FORMAT.md).
 *
 * A cursor is a name and the next offset its consumer will read.  The file
 * is memory-mapped by every handle that uses cursors, so committed() is a
 * few memory loads; commits happen under the log's state lock (state.h),
 * so compare-and-set works across processes.
 *
 * Each cursor has a slot with two copies of its value, each with a
 * sequence number and a CRC32C that also covers the name.  A commit
 * writes the copy that is not current -- its fields first, its CRC last
 * -- so a reader (who takes no lock) and a crash at any byte both leave
 * the old copy or the new one: a copy whose CRC does not match is not
 * there.  The current copy is the valid one with the larger sequence.
 * Unlike .state this file is not derived from anything: it is the only
 * copy of the cursors, kept with sync = "always" by an fdatasync per
 * commit.
 */
#ifndef TK_CURSORS_H
#define TK_CURSORS_H

#include <stddef.h>
#include <stdint.h>

#include "takhin.h"

#define TK_CURSORS_SLOTS 1024

typedef struct tk_cursors {
    unsigned char *map;         /* NULL: no file (yet) */
    int fd;
    int writable;
} tk_cursors;

/* Maps <dir>/.cursors; a writer creates it, a reader without one sees no
 * cursors (and maps it when it appears: tk_cursors_refresh). */
tk_code tk_cursors_open(const char *dir, int writer, tk_cursors *c, tk_err *err);
void tk_cursors_close(tk_cursors *c);

/* A reader maps a file created since it opened. */
void tk_cursors_refresh(const char *dir, tk_cursors *c);

/* 1 and *offset when name has a committed offset. */
int tk_cursors_get(const tk_cursors *c, const char *name, int64_t *offset);

/* Caller holds the state lock and has checked the rules (range,
 * backwards, expect).  durable: fdatasync before returning. */
tk_code tk_cursors_put(tk_cursors *c, const char *dir, const char *name, int64_t offset,
                       int durable, tk_err *err);
tk_code tk_cursors_remove(tk_cursors *c, const char *dir, const char *name, int durable,
                          int *found, tk_err *err);

/* Every cursor into out (up to cap); returns how many there are. */
size_t tk_cursors_list(const tk_cursors *c, tk_cursor_info *out, size_t cap);

/* A new file holding exactly these cursors, replacing any (restores). */
tk_code tk_cursors_write(const char *dir, const tk_cursor_info *list, size_t n, tk_err *err);

#endif
