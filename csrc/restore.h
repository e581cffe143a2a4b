/*
 * restore.h -- finishing an in-place restore (see snapshot.c).
 *
 * An in-place restore builds the new segment files in
 * <dir>/.restore-ready/ (with a list of their names in
 * <dir>/.restore-ready/restore.list) and then applies it: segment files of
 * the old log are removed and the new ones moved in.  Applying is
 * idempotent, so a writer that opens the log after a crash simply applies
 * it again: the log is then the restored one, never a mix.
 */
#ifndef TK_RESTORE_H
#define TK_RESTORE_H

#include "takhin.h"

/* 1 when dir holds a committed, unapplied in-place restore. */
int tk_restore_pending(const char *dir);

/* Applies a pending restore; the caller holds dir's writer lock. */
tk_code tk_restore_apply(const char *dir, tk_err *err);

#endif
