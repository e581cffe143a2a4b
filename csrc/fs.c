/*
 * fs.c -- POSIX file helpers (fs.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "sys.h"
#include "takhin.h"
#include "internal.h"

/* ------------------------------------------------------------------ */
/* Reading and writing                                                  */
/* ------------------------------------------------------------------ */

int tk_pwrite_all(int fd, const void *buf, size_t len, uint64_t off) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = tk_pwrite(fd, p, len, (off_t)off);
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
        ssize_t n = tk_write(fd, p, len);
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

/* Closes fd keeping errno (and the first error) intact. */
static int close_keep(int fd, int rc) {
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* ------------------------------------------------------------------ */
/* Durability                                                           */
/* ------------------------------------------------------------------ */

static int fsync_open(const char *path, int flags) {
    int fd = tk_open(path, flags | O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (tk_fsync(fd) < 0) return close_keep(fd, -1);
    close(fd);
    return 0;
}

int tk_fsync_dir(const char *dir) { return fsync_open(dir, O_DIRECTORY); }
int tk_fsync_path(const char *path) { return fsync_open(path, O_NOFOLLOW); }

/* fsyncs every file of a directory, then the directory. */
static int fsync_each(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[PATH_MAX];
    if (!d) return -1;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        if (tk_path_join(path, sizeof path, dir, de->d_name) < 0 || tk_fsync_path(path) < 0) {
            int e = errno;
            closedir(d);
            errno = e;
            return -1;
        }
    }
    closedir(d);
    return tk_fsync_dir(dir);
}

/* One syncfs(2) covers every file of a freshly built directory at once --
 * hard links to a log's sealed segments among them, whose data a log with
 * sync = "none" may still hold in the page cache.  An fsync per file
 * costs a device cache flush each, which made a link-mode snapshot's cost
 * grow with the number of segments.  The price: syncfs also writes back
 * unrelated dirty data of that filesystem.  Where syncfs is missing, fall
 * back to fsync per file. */
int tk_sync_tree(const char *dir) {
    int fd = tk_open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (tk_syncfs(fd) < 0) {
        if (errno == ENOSYS) { close(fd); return fsync_each(dir); }
        return close_keep(fd, -1);
    }
    if (tk_fsync(fd) < 0) return close_keep(fd, -1);
    close(fd);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Directories and names                                                */
/* ------------------------------------------------------------------ */

int tk_mkdir_p(const char *path, mode_t mode) {
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0) { errno = ENOENT; return -1; }
    if (len >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (tk_mkdir(buf, mode) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (tk_mkdir(buf, mode) < 0 && errno != EEXIST) return -1;
    return 0;
}

int tk_path_join(char *out, size_t cap, const char *dir, const char *name) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) { errno = ENAMETOOLONG; return -1; }
    return 0;
}

int tk_read_file(const char *path, size_t max, unsigned char **out, size_t *len) {
    struct stat st;
    unsigned char *buf;
    ssize_t got;
    int fd = tk_open(path, O_RDONLY | O_CLOEXEC, 0), e;
    *out = NULL;
    *len = 0;
    if (fd < 0) return -1;
    if (fstat(fd, &st) < 0) goto fail;
    if ((uint64_t)st.st_size > max) { errno = EFBIG; goto fail; }
    if (!(buf = tk_malloc((size_t)st.st_size + 1))) { errno = ENOMEM; goto fail; }
    got = tk_pread_full(fd, buf, (size_t)st.st_size, 0);
    if (got < 0) { e = errno; free(buf); errno = e; goto fail; }
    close(fd);
    *out = buf;
    *len = (size_t)got;
    return 0;
fail:
    e = errno;
    close(fd);
    errno = e;
    return -1;
}

long tk_link_count(int fd) {
    struct stat st;
    if (fstat(fd, &st) < 0) return -1;
    return (long)st.st_nlink;
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

/* ------------------------------------------------------------------ */
/* Whole files                                                          */
/* ------------------------------------------------------------------ */

int tk_replace_file(const char *path, const void *buf, size_t len, int durable) {
    char tmp[PATH_MAX], dir[PATH_MAX], *slash;
    int fd;
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    unlink(tmp);                        /* a leftover of an earlier crash */
    fd = tk_open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    if (tk_write_all(fd, buf, len) < 0 || (durable && tk_fsync(fd) < 0)) {
        close_keep(fd, -1);
        goto fail;
    }
    if (close(fd) < 0) goto fail;
    if (tk_rename(tmp, path) < 0) goto fail;
    if (!durable) return 0;
    snprintf(dir, sizeof dir, "%s", path);
    slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    return tk_fsync_dir(dir);           /* the new file is in place: no cleanup */
fail:
    {
        int saved = errno;
        unlink(tmp);
        errno = saved;
        return -1;
    }
}

int tk_write_new(const char *path, const void *buf, size_t len) {
    int fd = tk_open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    if (tk_write_all(fd, buf, len) < 0) return close_keep(fd, -1);
    return close(fd);
}

static int copy_by_rw(int src, int dst, uint64_t off, uint64_t len) {
    char buf[65536];
    while (len > 0) {
        size_t want = len < sizeof buf ? (size_t)len : sizeof buf;
        ssize_t n = tk_pread_full(src, buf, want, off);
        if (n < 0) return -1;
        if ((size_t)n != want) { errno = ENODATA; return -1; }   /* source shrank */
        if (tk_pwrite_all(dst, buf, want, off) < 0) return -1;
        off += want; len -= want;
    }
    return 0;
}

int tk_copy_range(int src, int dst, uint64_t len) {
    loff_t in = 0, out = 0;
    while ((uint64_t)in < len) {
        ssize_t n = tk_copy_file_range(src, &in, dst, &out, (size_t)(len - (uint64_t)in));
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                errno == EOPNOTSUPP || errno == EBADF)
                return copy_by_rw(src, dst, (uint64_t)in, len - (uint64_t)in);
            return -1;
        }
        if (n == 0) { errno = ENODATA; return -1; }          /* source shrank */
    }
    return 0;
}

int tk_copy_to_new(int src, const char *dst, uint64_t len) {
    int fd = tk_open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    if (tk_copy_range(src, fd, len) < 0) return close_keep(fd, -1);
    return close(fd);
}

int tk_place(const char *src, const char *dst, uint64_t len, int link_ok, int *linked) {
    int fd, rc;
    *linked = 0;
    if (link_ok) {
        if (tk_link(src, dst) == 0) { *linked = 1; return 0; }
        if (errno != EXDEV && errno != EPERM && errno != EMLINK && errno != ENOTSUP)
            return -1;
    }
    if ((fd = tk_open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0)) < 0) return -1;
    if (len == TK_WHOLE_FILE) {
        struct stat st;
        if (fstat(fd, &st) < 0) return close_keep(fd, -1);
        len = (uint64_t)st.st_size;
    }
    rc = tk_copy_to_new(fd, dst, len);
    return close_keep(fd, rc);
}

int tk_file_crc(int fd, uint64_t len, uint32_t *crc_out) {
    size_t cap = 1u << 20;
    unsigned char *buf = tk_malloc(cap);
    uint64_t pos = 0;
    uint32_t crc = 0;
    if (!buf) { errno = ENOMEM; return -1; }
    while (pos < len) {
        size_t want = len - pos < cap ? (size_t)(len - pos) : cap;
        ssize_t n = tk_pread_full(fd, buf, want, pos);
        if (n < 0 || (size_t)n != want) {
            int e = n < 0 ? errno : ENODATA;
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

int tk_file_sum(const char *path, uint64_t *size, uint32_t *crc) {
    struct stat st;
    int fd = tk_open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) return -1;
    if (fstat(fd, &st) < 0 || tk_file_crc(fd, (uint64_t)st.st_size, crc) < 0)
        return close_keep(fd, -1);
    close(fd);
    *size = (uint64_t)st.st_size;
    return 0;
}
