/*
 * lock.h -- the writer lock of a directory.
 */
#ifndef TK_LOCK_H
#define TK_LOCK_H

#include "takhin.h"

/* Takes an exclusive flock on <dir>/<name> without waiting and records
 * our pid in it.  LOCKED names the holder's pid when it can be read. */
tk_code tk_dirlock_try(const char *dir, const char *name, int *fd_out, tk_err *err);

/* Takes a shared flock on <dir>/<name> without waiting (shared-mode
 * writers): it excludes an exclusive holder, not other shared ones. */
tk_code tk_dirlock_try_shared(const char *dir, const char *name, int *fd_out, tk_err *err);

/* Waits for the lock (used to serialize short metadata updates). */
tk_code tk_dirlock_wait(const char *dir, const char *name, int *fd_out, tk_err *err);

void tk_dirlock_release(int fd);

/* A shared holder tries to become exclusive for a moment, without
 * waiting (*got says whether it did), and goes back to shared. */
tk_code tk_lockfd_upgrade(int fd, const char *dir, int *got, tk_err *err);
tk_code tk_lockfd_share(int fd, const char *dir, tk_err *err);

#endif
