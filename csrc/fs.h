/*
 * fs.h -- small POSIX file helpers that loop over EINTR and short
 * transfers.
 *
 * All return 0 (or a byte count) on success and -1 with errno set on
 * failure, so the caller decides how to word the error: every message
 * takhin gives names the operation and the path (error.h).
 *
 * The atomic replace of a whole file, the way every metadata file of
 * takhin changes (git's lockfile.h, Redis's rdbSave, LevelDB's
 * SetCurrentFile):
 *
 *     tk_replace_file(path, buf, len, durable)
 *       1. write buf to "<path>.tmp", created with O_EXCL (a leftover of
 *          a crash is removed first), looping over short writes;
 *       2. fsync it (when durable) and close it, checking close;
 *       3. rename it over path;
 *       4. fsync the directory (when durable), so the new name survives
 *          power loss.
 *     A reader sees the old file or the new one, never a mix; a crash
 *     leaves at most "<path>.tmp", which the next writer removes.  On
 *     failure the temp file is removed and errno is the first failing
 *     call's.
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
int tk_fsync_path(const char *path);
int tk_mkdir_p(const char *path, mode_t mode);

/* Joins dir and name into out; -1 with ENAMETOOLONG when it does not fit. */
int tk_path_join(char *out, size_t cap, const char *dir, const char *name);

/* Link count of fd, or -1. */
long tk_link_count(int fd);

/* The whole of a small file in a new buffer (*out, *len; caller frees);
 * EFBIG when it holds more than max bytes. */
int tk_read_file(const char *path, size_t max, unsigned char **out, size_t *len);

/* The atomic replace described above. */
int tk_replace_file(const char *path, const void *buf, size_t len, int durable);

/* Creates path (O_EXCL) holding buf. */
int tk_write_new(const char *path, const void *buf, size_t len);

/* Copies the first len bytes of src into dst, from the start
 * (copy_file_range, falling back to read/write across filesystems).
 * A source shorter than len fails with ENODATA: it shrank under us. */
int tk_copy_range(int src, int dst, uint64_t len);

/* Creates dst (O_EXCL) holding the first len bytes of descriptor src. */
int tk_copy_to_new(int src, const char *dst, uint64_t len);

#define TK_WHOLE_FILE UINT64_MAX

/* Hard-links src to dst (when link_ok), or copies its first len bytes
 * (TK_WHOLE_FILE: all of it) when linking is not possible -- another
 * filesystem, a filesystem without links -- or not wanted.  *linked says
 * which happened. */
int tk_place(const char *src, const char *dst, uint64_t len, int link_ok, int *linked);

/* Size and CRC32C of a whole file (not following a symbolic link). */
int tk_file_sum(const char *path, uint64_t *size, uint32_t *crc);

/* CRC32C of a descriptor's first len bytes (ENODATA when shorter). */
int tk_file_crc(int fd, uint64_t len, uint32_t *crc);

/* Makes a freshly built directory durable: its files and their names. */
int tk_sync_tree(const char *dir);

/* Removes a directory tree without following symbolic links; a missing
 * path is not an error. */
int tk_rmtree(const char *path);

#endif
