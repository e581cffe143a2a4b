/*
 * lock.c -- directory locks with flock(2).
 *
 * Why flock and not fcntl (POSIX) locks: a POSIX lock belongs to the
 * process and is dropped when the process closes ANY descriptor of the
 * file -- a snapshot reading .lock, a library opening it to print the
 * holder, would silently unlock the log (SQLite's os_unix.c documents the
 * trap at length).  An flock lock belongs to the open file description: it
 * is released only when that description is closed, it conflicts between
 * two opens in the same process too (so a second writer in one process is
 * refused like one in another), and it dies with the process, so a
 * SIGKILLed writer never leaves a stale lock.  flock is not reliable on
 * NFS; takhin directories are meant for local filesystems.
 *
 * An exclusive holder writes its pid into the file after taking the lock,
 * for error messages only; nothing trusts it.  Shared holders (shared-mode
 * writers, LOCK_SH) write nothing there: their pids are in the log's
 * shared state, which is where a refused exclusive writer looks for them.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "error.h"
#include "fs.h"
#include "lock.h"
#include "names.h"
#include "state.h"
#include "sys.h"
#include "internal.h"

static void describe_holder(int fd, char *out, size_t cap) {
    char buf[64];
    ssize_t n = tk_pread_full(fd, buf, sizeof buf - 1, 0);
    long pid = 0;
    snprintf(out, cap, "another process");
    if (n <= 0) return;
    buf[n] = '\0';
    /* The text outlives its writer: name only a live process. */
    if (sscanf(buf, "pid %ld", &pid) == 1 && tk_pid_alive(pid))
        snprintf(out, cap, "pid %ld", pid);
}

static void record_holder(int fd) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "pid %ld\n", (long)getpid());
    /* Best effort: the lock is what matters, the text is a courtesy. */
    if (ftruncate(fd, 0) == 0) (void)tk_pwrite_all(fd, buf, (size_t)n, 0);
}

static tk_code lock_open(const char *dir, const char *name, int *fd, char *path,
                         tk_err *err) {
    if (tk_path_join(path, PATH_MAX, dir, name) < 0)
        return tk_fail_errno(err, errno, "lock %s/%s", dir, name);
    *fd = tk_open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (*fd < 0) return tk_fail_errno(err, errno, "open %s", path);
    return TK_OK;
}

/* Who holds the lock we could not take: the pid an exclusive holder
 * wrote, or else the shared writers the log's state knows. */
static void describe(int fd, const char *dir, char *out, size_t cap) {
    char writers[160];
    describe_holder(fd, out, cap);
    if (strcmp(out, "another process") != 0) return;
    tk_state_describe_writers(dir, writers, sizeof writers);
    if (writers[0]) snprintf(out, cap, "shared writers (%s)", writers);
}

static tk_code lock_take(const char *dir, const char *name, int how, int *fd_out,
                         tk_err *err) {
    char path[PATH_MAX], holder[200];
    int fd = -1;
    tk_code rc = lock_open(dir, name, &fd, path, err);
    if (rc != TK_OK) return rc;
    while (flock(fd, how) < 0) {
        int e = errno;
        if (e == EINTR) continue;
        if (e == EWOULDBLOCK) {
            describe(fd, dir, holder, sizeof holder);
            close(fd);
            return tk_fail(err, TK_LOCKED, "lock %s: held by %s", path, holder);
        }
        close(fd);
        return tk_fail_errno(err, e, "lock %s", path);
    }
    if (!(how & LOCK_SH)) record_holder(fd);
    *fd_out = fd;
    return TK_OK;
}

tk_code tk_dirlock_try(const char *dir, const char *name, int *fd_out, tk_err *err) {
    return lock_take(dir, name, LOCK_EX | LOCK_NB, fd_out, err);
}

tk_code tk_dirlock_try_shared(const char *dir, const char *name, int *fd_out, tk_err *err) {
    return lock_take(dir, name, LOCK_SH | LOCK_NB, fd_out, err);
}

tk_code tk_dirlock_wait(const char *dir, const char *name, int *fd_out, tk_err *err) {
    return lock_take(dir, name, LOCK_EX, fd_out, err);
}

void tk_dirlock_release(int fd) {
    if (fd >= 0) close(fd);         /* closing the description drops the lock */
}

tk_code tk_lockfd_upgrade(int fd, const char *dir, int *got, tk_err *err) {
    *got = 0;
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK) return TK_OK;
        if (errno != EINTR) return tk_fail_errno(err, errno, "lock %s/" TK_LOCK_FILE, dir);
    }
    *got = 1;
    return TK_OK;
}

tk_code tk_lockfd_share(int fd, const char *dir, tk_err *err) {
    while (flock(fd, LOCK_SH) < 0)
        if (errno != EINTR) return tk_fail_errno(err, errno, "lock %s/" TK_LOCK_FILE, dir);
    return TK_OK;
}
