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

/* For a lock file kept open between uses (shared writers): take the lock
 * again, waiting, or let it go without closing the file. */
tk_code tk_lockfd_wait(int fd, const char *dir, tk_err *err);
void tk_lockfd_unlock(int fd);

#endif
