/*
 * restore.c -- applying a committed in-place restore (restore.h).
 *
 * Redo rule, safe to run any number of times after a crash at any point:
 *   1. every data file of <dir> (segment files, .start, .cursors:
 *      tk_is_log_data_file) is removed unless it is in the new set
 *      and no longer waiting in .restore-ready (it was already moved in);
 *   2. every file still waiting in .restore-ready is renamed into <dir>;
 *   3. <dir> is fsynced and .restore-ready removed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fault.h"
#include "fs.h"
#include "names.h"
#include "restore.h"
#include "sys.h"
#include "internal.h"

int tk_restore_pending(const char *dir) {
    char path[PATH_MAX];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/" TK_RESTORE_READY "/" TK_RESTORE_LIST, dir) >= (int)sizeof path)
        return 0;
    return stat(path, &st) == 0;
}

/* The new set: one name per line of restore.list. */
static tk_code read_list(const char *ready, char **text, tk_err *err) {
    char path[PATH_MAX];
    FILE *f;
    long len;
    if (tk_path_join(path, sizeof path, ready, TK_RESTORE_LIST) < 0)
        return tk_fail_errno(err, errno, "open %s", ready);
    if (!(f = fopen(path, "rb"))) return tk_fail_errno(err, errno, "open %s", path);
    if (fseek(f, 0, SEEK_END) < 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0 ||
        !(*text = tk_calloc(1, (size_t)len + 2)) || fread(*text, 1, (size_t)len, f) != (size_t)len) {
        int e = errno ? errno : EIO;
        fclose(f);
        return tk_fail_errno(err, e, "read %s", path);
    }
    fclose(f);
    return TK_OK;
}

static int in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; *p; ) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0) return 1;
        if (!eol) break;
        p = eol + 1;
    }
    return 0;
}

static int exists_in(const char *dir, const char *name) {
    char path[PATH_MAX];
    struct stat st;
    return tk_path_join(path, sizeof path, dir, name) == 0 && lstat(path, &st) == 0;
}

static tk_code remove_old(const char *dir, const char *ready, const char *list, tk_err *err) {
    DIR *d = opendir(dir);
    struct dirent *de;
    if (!d) return tk_fail_errno(err, errno, "open %s", dir);
    while ((de = readdir(d)) != NULL) {
        if (!tk_is_log_data_file(de->d_name)) continue;
        if (in_list(list, de->d_name) && !exists_in(ready, de->d_name)) continue;
        if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT) {
            int e = errno;
            closedir(d);
            return tk_fail_errno(err, e, "remove %s/%s", dir, de->d_name);
        }
    }
    closedir(d);
    return TK_OK;
}

static tk_code move_new(const char *dir, const char *ready, const char *list, tk_err *err) {
    char from[PATH_MAX], to[PATH_MAX], name[64];
    for (const char *p = list; *p; ) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len > 0 && len < sizeof name) {
            memcpy(name, p, len);
            name[len] = '\0';
            if (tk_is_log_data_file(name) && exists_in(ready, name)) {
                if (tk_path_join(from, sizeof from, ready, name) < 0 ||
                    tk_path_join(to, sizeof to, dir, name) < 0 || tk_rename(from, to) < 0)
                    return tk_fail_errno(err, errno, "move %s into %s", from, dir);
                TK_FAULT("inplace.moving");
            }
        }
        if (!eol) break;
        p = eol + 1;
    }
    return TK_OK;
}

tk_code tk_restore_apply(const char *dir, tk_err *err) {
    char ready[PATH_MAX], *list = NULL;
    tk_code rc;
    if (tk_path_join(ready, sizeof ready, dir, TK_RESTORE_READY) < 0)
        return tk_fail_errno(err, ENAMETOOLONG, "restore %s", dir);
    if ((rc = read_list(ready, &list, err)) != TK_OK) return rc;
    rc = remove_old(dir, ready, list, err);
    if (rc == TK_OK) TK_FAULT("inplace.removed");
    if (rc == TK_OK) rc = move_new(dir, ready, list, err);
    free(list);
    if (rc != TK_OK) return rc;
    if (tk_fsync_dir(dir) < 0) return tk_fail_errno(err, errno, "fsync %s", dir);
    TK_FAULT("inplace.moved");
    if (tk_rmtree(ready) < 0) return tk_fail_errno(err, errno, "remove %s", ready);
    if (tk_fsync_dir(dir) < 0) return tk_fail_errno(err, errno, "fsync %s", dir);
    return TK_OK;
}
