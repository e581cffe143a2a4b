/*
 * sys.h -- the system calls and allocations that can fail in ways a user
 * must survive, each behind one name, so that the fault build can make
 * any of them fail at its Nth call (SQLite's aSyscall[] is the model).
 *
 * In a normal build every tk_xxx below is the call itself.  Built with
 * -DTK_FAULT_INJECTION, each call first asks tk_sys_check whether it
 * should fail; specs arm a failure with tk_sys_arm ("the 3rd fsync from
 * now fails with EIO") and count calls with tk_sys_calls, so they can
 * drive every rollback path of an operation one failing call at a time.
 *
 * The kinds: open (open, mkdir), write (write, pwrite, copy_file_range),
 * fsync (fsync, fdatasync, syncfs), rename, link, ftruncate, and malloc
 * (malloc, calloc, realloc, strdup, strndup -- and jansson's allocations,
 * routed here in the fault build).
 */
#ifndef TK_SYS_H
#define TK_SYS_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

enum {
    TK_SYS_OPEN, TK_SYS_WRITE, TK_SYS_FSYNC, TK_SYS_RENAME, TK_SYS_LINK,
    TK_SYS_FTRUNCATE, TK_SYS_MALLOC, TK_SYS_KINDS
};

#ifdef TK_FAULT_INJECTION
/* 0, or -1 with errno set when this call is the one armed to fail. */
int tk_sys_check(int kind);
/* The nth call of kind from now fails with errno e (0 disarms); with
 * persist, every call after it fails too (a disk that stays full). */
void tk_sys_arm(int kind, long nth, int e, int persist);
/* Calls of kind made since the last tk_sys_reset. */
long tk_sys_calls(int kind);
/* Disarms everything and zeroes the counts. */
void tk_sys_reset(void);
const char *tk_sys_kind_name(int kind);
int tk_sys_kind_from_name(const char *name);      /* -1 when unknown */
#define TK_SYS_FAILS(kind) (tk_sys_check(kind) < 0)
#else
#define TK_SYS_FAILS(kind) 0
#endif

static inline int tk_open(const char *path, int flags, mode_t mode) {
    return TK_SYS_FAILS(TK_SYS_OPEN) ? -1 : open(path, flags, mode);
}
static inline int tk_mkdir(const char *path, mode_t mode) {
    return TK_SYS_FAILS(TK_SYS_OPEN) ? -1 : mkdir(path, mode);
}
static inline ssize_t tk_write(int fd, const void *buf, size_t len) {
    return TK_SYS_FAILS(TK_SYS_WRITE) ? -1 : write(fd, buf, len);
}
static inline ssize_t tk_pwrite(int fd, const void *buf, size_t len, off_t off) {
    return TK_SYS_FAILS(TK_SYS_WRITE) ? -1 : pwrite(fd, buf, len, off);
}
static inline ssize_t tk_copy_file_range(int in, loff_t *inoff, int out, loff_t *outoff,
                                         size_t len) {
    return TK_SYS_FAILS(TK_SYS_WRITE) ? -1 : copy_file_range(in, inoff, out, outoff, len, 0);
}
static inline int tk_fsync(int fd) {
    return TK_SYS_FAILS(TK_SYS_FSYNC) ? -1 : fsync(fd);
}
static inline int tk_fdatasync(int fd) {
    return TK_SYS_FAILS(TK_SYS_FSYNC) ? -1 : fdatasync(fd);
}
/* A writeback hint (its result is advice, not an error a caller reports). */
static inline int tk_sync_file_range(int fd, off_t off, off_t len) {
    return TK_SYS_FAILS(TK_SYS_FSYNC) ? -1 : sync_file_range(fd, off, len, SYNC_FILE_RANGE_WRITE);
}
static inline int tk_syncfs(int fd) {
    return TK_SYS_FAILS(TK_SYS_FSYNC) ? -1 : syncfs(fd);
}
static inline int tk_rename(const char *from, const char *to) {
    return TK_SYS_FAILS(TK_SYS_RENAME) ? -1 : rename(from, to);
}
static inline int tk_rename_noreplace(const char *from, const char *to) {
    return TK_SYS_FAILS(TK_SYS_RENAME) ? -1
           : renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE);
}
static inline int tk_link(const char *from, const char *to) {
    return TK_SYS_FAILS(TK_SYS_LINK) ? -1 : link(from, to);
}
static inline int tk_ftruncate(int fd, off_t len) {
    return TK_SYS_FAILS(TK_SYS_FTRUNCATE) ? -1 : ftruncate(fd, len);
}
static inline void *tk_malloc(size_t n) {
    return TK_SYS_FAILS(TK_SYS_MALLOC) ? NULL : malloc(n);
}
static inline void *tk_calloc(size_t n, size_t size) {
    return TK_SYS_FAILS(TK_SYS_MALLOC) ? NULL : calloc(n, size);
}
static inline void *tk_realloc(void *p, size_t n) {
    return TK_SYS_FAILS(TK_SYS_MALLOC) ? NULL : realloc(p, n);
}
static inline char *tk_strdup(const char *s) {
    return TK_SYS_FAILS(TK_SYS_MALLOC) ? NULL : strdup(s);
}
static inline char *tk_strndup(const char *s, size_t n) {
    return TK_SYS_FAILS(TK_SYS_MALLOC) ? NULL : strndup(s, n);
}

#endif
