/*
 * fs.h -- small POSIX helpers that loop over EINTR and short transfers.
 *
 * All return 0 (or a byte count) on success and -1 with errno set on
 * failure, so the caller decides how to word the error.
 */
#ifndef TK_FS_H
#define TK_FS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

int tk_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);
int tk_write_all(int fd, const void *buf, size_t len);

/* Reads up to len bytes at off; returns the count, short only at EOF. */
ssize_t tk_pread_full(int fd, void *buf, size_t len, uint64_t off);

int tk_fsync_dir(const char *dir);
int tk_mkdir_p(const char *path, mode_t mode);

/* Copies len bytes from the start of src to the start of dst
 * (copy_file_range, falling back to read/write across filesystems). */
int tk_copy_range(int src, int dst, uint64_t len);

/* Joins dir and name into out; -1 with ENAMETOOLONG when it does not fit. */
int tk_path_join(char *out, size_t cap, const char *dir, const char *name);

/* Link count of fd, or -1. */
long tk_link_count(int fd);

/* Atomic replace: writes buf to "<path>.tmp" (O_EXCL), fsyncs when
 * durable, renames over path.  On failure the temp file is removed and
 * errno is that of the first failing call. */
int tk_replace_file(const char *path, const void *buf, size_t len, int durable);

/* Removes a directory tree without following symbolic links; a missing
 * path is not an error. */
int tk_rmtree(const char *path);

/* CRC32C of a file's first len bytes (-1 with errno, EIO when shorter). */
int tk_file_crc(int fd, uint64_t len, uint32_t *crc);

#endif
