/*
 * fs.c -- POSIX helpers.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "takhin.h"

int tk_pwrite_all(int fd, const void *buf, size_t len, uint64_t off) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) { errno = ENOSPC; return -1; }
        p += n; len -= (size_t)n; off += (uint64_t)n;
    }
    return 0;
}

int tk_write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) { errno = ENOSPC; return -1; }
        p += n; len -= (size_t)n;
    }
    return 0;
}

ssize_t tk_pread_full(int fd, void *buf, size_t len, uint64_t off) {
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, p + got, len - got, (off_t)(off + got));
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

int tk_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc, saved;
    if (fd < 0) return -1;
    rc = fsync(fd);
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int tk_mkdir_p(const char *path, mode_t mode) {
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0) { errno = ENOENT; return -1; }
    if (len >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, mode) < 0 && errno != EEXIST) return -1;
    return 0;
}

static int copy_by_rw(int src, int dst, uint64_t off, uint64_t len) {
    char buf[65536];
    while (len > 0) {
        size_t want = len < sizeof buf ? (size_t)len : sizeof buf;
        ssize_t n = tk_pread_full(src, buf, want, off);
        if (n < 0) return -1;
        if ((size_t)n != want) { errno = EIO; return -1; }   /* source shrank */
        if (tk_pwrite_all(dst, buf, want, off) < 0) return -1;
        off += want; len -= want;
    }
    return 0;
}

int tk_copy_range(int src, int dst, uint64_t len) {
    loff_t in = 0, out = 0;
    while ((uint64_t)in < len) {
        ssize_t n = copy_file_range(src, &in, dst, &out, (size_t)(len - (uint64_t)in), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                errno == EOPNOTSUPP || errno == EBADF)
                return copy_by_rw(src, dst, (uint64_t)in, len - (uint64_t)in);
            return -1;
        }
        if (n == 0) { errno = EIO; return -1; }              /* source shrank */
    }
    return 0;
}

int tk_path_join(char *out, size_t cap, const char *dir, const char *name) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) { errno = ENAMETOOLONG; return -1; }
    return 0;
}

long tk_link_count(int fd) {
    struct stat st;
    if (fstat(fd, &st) < 0) return -1;
    return (long)st.st_nlink;
}

int tk_replace_file(const char *path, const void *buf, size_t len, int durable) {
    char tmp[PATH_MAX];
    int fd, saved;
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    unlink(tmp);                        /* a leftover of an earlier crash */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    if (tk_write_all(fd, buf, len) < 0) goto fail;
    if (durable && fsync(fd) < 0) goto fail;
    if (close(fd) < 0) { fd = -1; goto fail; }
    fd = -1;
    if (rename(tmp, path) < 0) goto fail;
    return 0;
fail:
    saved = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    errno = saved;
    return -1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)ftw;
    if (flag == FTW_DP) return rmdir(path) < 0 && errno != ENOENT ? -1 : 0;
    return unlink(path) < 0 && errno != ENOENT ? -1 : 0;
}

int tk_rmtree(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int tk_file_crc(int fd, uint64_t len, uint32_t *crc_out) {
    size_t cap = 1u << 20;
    unsigned char *buf = malloc(cap);
    uint64_t pos = 0;
    uint32_t crc = 0;
    if (!buf) { errno = ENOMEM; return -1; }
    while (pos < len) {
        size_t want = len - pos < cap ? (size_t)(len - pos) : cap;
        ssize_t n = tk_pread_full(fd, buf, want, pos);
        if (n < 0 || (size_t)n != want) {
            int e = n < 0 ? errno : EIO;
            free(buf);
            errno = e;
            return -1;
        }
        crc = tk_crc32c(crc, buf, want);
        pos += want;
    }
    free(buf);
    *crc_out = crc;
    return 0;
}
