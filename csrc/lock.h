/*
 * lock.h -- the writer lock of a directory.
 */
#ifndef TK_LOCK_H
#define TK_LOCK_H

#include "takhin.h"

/* Takes an exclusive flock on <dir>/<name> without waiting and records
 * our pid in it.  LOCKED names the holder's pid when it can be read. */
tk_code tk_dirlock_try(const char *dir, const char *name, int *fd_out, tk_err *err);

/* Waits for the lock (used to serialize short metadata updates). */
tk_code tk_dirlock_wait(const char *dir, const char *name, int *fd_out, tk_err *err);

void tk_dirlock_release(int fd);

#endif
