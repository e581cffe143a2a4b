/*
 * snapshot.c -- point-in-time snapshots of a log.
 *
 * Layout (docs/FORMAT.md):
 *
 *     <snapdir>/.lock                   metadata lock (flock, waited for)
 *     <snapdir>/snapshots.json          catalog, newest first; rebuildable
 *     <snapdir>/snapshot-<id>/          one complete snapshot:
 *         manifest.json                 its record, every file's size and CRC32C
 *         00000000000000000000.log ...  segment files (hard links or copies)
 *     <snapdir>/.tmp-<id>/              a snapshot being built
 *     <snapdir>/.del-<id>/              a snapshot being removed
 *
 * Create.  Crash state after each step in brackets.
 *   1. Under the metadata lock, check min_interval, mkdir
 *      .tmp-<id> and flock it (a live build).                  [leftover]
 *   2. Release the metadata lock.
 *   3. Cut the log (appends wait only for this), link sealed
 *      segments, copy the active one up to the cut.             [leftover]
 *   4. Write manifest.json, fsync every file and the dir.       [leftover]
 *   5. Under the metadata lock, check min_interval again and
 *      rename .tmp-<id> -> snapshot-<id>; fsync <snapdir>.      [complete,
 *                                                                 unlisted]
 *   6. Publish snapshots.json (temp, fsync, rename, fsync dir). [listed]
 * A leftover .tmp-* is removed by the next manager that opens, unless its
 * builder still holds its flock.  A complete but unlisted snapshot is put
 * back in the catalog whenever the catalog and the directory disagree.
 *
 * Delete (and cleanup, for several at once).
 *   1. Under the lock, rename snapshot-<id> -> .del-<id>.        [unlisted:
 *                                                     dir gone, catalog fixed]
 *   2. Publish snapshots.json without it.                       [listed no more]
 *   3. After the lock, remove .del-<id>.                        [leftover]
 *
 * Restore into a new directory.
 *   1. Verify each file's CRC against the manifest, then link (or copy) it
 *      into <parent>/.<name>.restore-<id>-<rand> (flocked).    [leftover]
 *   2. With upto_*: open that directory as a log and truncate it (the log
 *      copies shared files before changing them).               [leftover]
 *   3. fsync; rename onto the target (missing or an empty dir). [restored]
 *
 * Restore in place (replace = true), with the target's writer lock held:
 *   1-2 as above, in <target>/.restore-tmp-<rand>.              [leftover:
 *                                                  removed by the next writer]
 *   3. Write restore.list, fsync, rename to .restore-ready.     [commit point]
 *   4. Apply (restore.c): remove old segment files, move the
 *      new ones in, remove .restore-ready.                      [restored]
 * A writer opening the log after a crash past step 3 applies it again, so
 * the log is either the old one or the restored one, never a mix.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cut.h"
#include "error.h"
#include "fault.h"
#include "fs.h"
#include "lock.h"
#include "manifest.h"
#include "restore.h"
#include "segment.h"

#define CATALOG  "snapshots.json"
#define MANIFEST "manifest.json"
#define SNAP_PREFIX "snapshot-"

struct tk_snapmgr {
    char *log_dir;
    char *dir;
    tk_snap_mode mode;
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t random32(void) {
    uint32_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
        v = (uint32_t)getpid() * 2654435761u ^ (uint32_t)now_ms();
    return v;
}

/* ------------------------------------------------------------------ */
/* Ids and paths                                                        */
/* ------------------------------------------------------------------ */

tk_code tk_snap_check_id(const char *id, tk_err *err) {
    size_t n = id ? strlen(id) : 0;
    if (n == 0) return tk_fail(err, TK_INVALID, "snapshot id is empty");
    if (n >= TK_SNAP_ID_MAX)
        return tk_fail(err, TK_INVALID, "snapshot id '%.80s' is longer than %d bytes", id,
                       TK_SNAP_ID_MAX - 1);
    if (id[0] == '.' || strstr(id, ".."))
        return tk_fail(err, TK_INVALID, "snapshot id '%s' may not start with '.' or hold '..'", id);
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return tk_fail(err, TK_INVALID, "snapshot id '%s' holds '%c': only letters, "
                           "digits, '-', '_' and '.' are allowed", id, c);
    }
    return TK_OK;
}

/* "<ms, 13 digits>-<8 hex>": sorts by time, unique across processes
 * (the final rename refuses to replace, and a clash is retried). */
static void new_id(char *out, size_t cap, int64_t ts) {
    snprintf(out, cap, "%013" PRId64 "-%08" PRIx32, ts, random32());
}

static int snap_path(char *out, size_t cap, const tk_snapmgr *m, const char *prefix,
                     const char *id, const char *file) {
    int n = file ? snprintf(out, cap, "%s/%s%s/%s", m->dir, prefix, id, file)
                 : snprintf(out, cap, "%s/%s%s", m->dir, prefix, id);
    if (n < 0 || (size_t)n >= cap) { errno = ENAMETOOLONG; return -1; }
    return 0;
}

/* Opens a directory and takes its flock: "someone is working here". */
static int claim_dir(const char *path, int wait) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    if (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------------ */
/* The catalog                                                          */
/* ------------------------------------------------------------------ */

static int newest_first(const void *a, const void *b) {
    const tk_snapshot *x = a, *y = b;
    if (x->timestamp != y->timestamp) return x->timestamp < y->timestamp ? 1 : -1;
    return -strcmp(x->id, y->id);
}

/* Ids of the complete snapshot directories (snapshot-<id>). */
static tk_code list_snapshot_dirs(const tk_snapmgr *m, char ***ids, size_t *n, tk_err *err) {
    DIR *d = opendir(m->dir);
    struct dirent *de;
    size_t cap = 0;
    *ids = NULL;
    *n = 0;
    if (!d) return tk_fail_errno(err, errno, "open %s", m->dir);
    while ((de = readdir(d)) != NULL) {
        const char *id = de->d_name + strlen(SNAP_PREFIX);
        if (strncmp(de->d_name, SNAP_PREFIX, strlen(SNAP_PREFIX)) != 0) continue;
        if (tk_snap_check_id(id, NULL) != TK_OK) continue;
        if (*n == cap) {
            char **p = realloc(*ids, (cap = cap ? cap * 2 : 16) * sizeof *p);
            if (!p) break;
            *ids = p;
        }
        if (!((*ids)[*n] = strdup(id))) break;
        (*n)++;
    }
    closedir(d);
    return TK_OK;
}

static void free_ids(char **ids, size_t n) {
    for (size_t i = 0; i < n; i++) free(ids[i]);
    free(ids);
}

static int catalog_matches(const tk_snapshot *snaps, size_t n, char **ids, size_t nids) {
    if (n != nids) return 0;
    for (size_t i = 0; i < n; i++) {
        size_t j;
        for (j = 0; j < nids && strcmp(snaps[i].id, ids[j]) != 0; j++) {}
        if (j == nids) return 0;
    }
    return 1;
}

/* Rebuilds the catalog from the manifests of the complete snapshots. */
static tk_code rebuild_catalog(const tk_snapmgr *m, char **ids, size_t nids,
                               tk_snapshot **out, size_t *n, tk_err *err) {
    tk_snapshot *snaps = calloc(nids + 1, sizeof *snaps);
    size_t count = 0;
    char path[PATH_MAX];
    tk_code rc;
    if (!snaps) return tk_fail(err, TK_NOMEM, "rebuild %s/" CATALOG ": out of memory", m->dir);
    for (size_t i = 0; i < nids; i++) {
        tk_manifest man;
        if (snap_path(path, sizeof path, m, SNAP_PREFIX, ids[i], MANIFEST) < 0) continue;
        if (tk_manifest_read(path, &man, NULL) != TK_OK) continue;     /* not ours */
        if (strcmp(man.snap.id, ids[i]) == 0) {
            snaps[count++] = man.snap;
            man.snap.segment_offsets = NULL;
        }
        tk_manifest_free(&man);
    }
    qsort(snaps, count, sizeof *snaps, newest_first);
    if (tk_path_join(path, sizeof path, m->dir, CATALOG) < 0) path[0] = '\0';
    rc = tk_catalog_write(path, snaps, count, err);
    if (rc != TK_OK) { tk_snapshot_list_free(snaps, count); return rc; }
    *out = snaps;
    *n = count;
    return TK_OK;
}

/* Reads the catalog; when it is missing, damaged, or disagrees with the
 * snapshot directories, rebuilds it.  Caller holds the metadata lock. */
static tk_code load_catalog(const tk_snapmgr *m, tk_snapshot **out, size_t *n, tk_err *err) {
    char path[PATH_MAX], **ids;
    size_t nids;
    tk_err scratch;
    tk_code rc;
    if (tk_path_join(path, sizeof path, m->dir, CATALOG) < 0)
        return tk_fail_errno(err, errno, "open %s", m->dir);
    if ((rc = list_snapshot_dirs(m, &ids, &nids, err)) != TK_OK) return rc;
    rc = tk_catalog_read(path, out, n, &scratch);
    if (rc == TK_OK && catalog_matches(*out, *n, ids, nids)) {
        free_ids(ids, nids);
        return TK_OK;
    }
    if (rc == TK_OK) tk_snapshot_list_free(*out, *n);
    if (rc != TK_OK && rc != TK_NOT_FOUND && rc != TK_CORRUPT) {
        free_ids(ids, nids);
        *err = scratch;
        return rc;
    }
    rc = rebuild_catalog(m, ids, nids, out, n, err);
    free_ids(ids, nids);
    return rc;
}

static tk_code publish_catalog(const tk_snapmgr *m, const tk_snapshot *snaps, size_t n,
                               tk_err *err) {
    char path[PATH_MAX];
    if (tk_path_join(path, sizeof path, m->dir, CATALOG) < 0)
        return tk_fail_errno(err, errno, "write %s", m->dir);
    tk_code rc = tk_catalog_write(path, snaps, n, err);
    if (rc == TK_OK && tk_fsync_dir(m->dir) < 0)
        rc = tk_fail_errno(err, errno, "fsync %s", m->dir);
    return rc;
}

static tk_code meta_lock(const tk_snapmgr *m, int *fd, tk_err *err) {
    return tk_dirlock_wait(m->dir, ".lock", fd, err);
}

/* Under the lock: the catalog as it stands now. */
static tk_code locked_catalog(const tk_snapmgr *m, int *lock_fd, tk_snapshot **snaps,
                              size_t *n, tk_err *err) {
    tk_code rc = meta_lock(m, lock_fd, err);
    if (rc != TK_OK) return rc;
    rc = load_catalog(m, snaps, n, err);
    if (rc != TK_OK) tk_dirlock_release(*lock_fd);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Opening                                                              */
/* ------------------------------------------------------------------ */

static void remove_leftovers(const tk_snapmgr *m) {
    DIR *d = opendir(m->dir);
    struct dirent *de;
    char path[PATH_MAX];
    if (!d) return;
    while ((de = readdir(d)) != NULL) {
        int fd;
        if (strncmp(de->d_name, ".tmp-", 5) != 0 && strncmp(de->d_name, ".del-", 5) != 0)
            continue;
        if (tk_path_join(path, sizeof path, m->dir, de->d_name) < 0) continue;
        if ((fd = claim_dir(path, 0)) < 0) continue;    /* still being worked on */
        tk_rmtree(path);
        close(fd);
    }
    closedir(d);
}

tk_code tk_snapmgr_open(const char *log_dir, const char *dir, tk_snap_mode mode,
                        tk_snapmgr **out, tk_err *err) {
    tk_snapmgr *m;
    struct stat st;
    tk_snapshot *snaps;
    size_t n;
    int lock_fd;
    tk_code rc;

    *out = NULL;
    if (!log_dir || !*log_dir) return tk_fail(err, TK_INVALID, "snapshot_manager: empty log directory");
    if (stat(log_dir, &st) < 0) return tk_fail_errno(err, errno, "snapshot_manager %s", log_dir);
    if (!S_ISDIR(st.st_mode))
        return tk_fail(err, TK_INVALID, "snapshot_manager %s: not a directory", log_dir);
    if (!(m = calloc(1, sizeof *m))) return tk_fail(err, TK_NOMEM, "snapshot_manager: out of memory");
    m->mode = mode;
    m->log_dir = strdup(log_dir);
    if (dir) m->dir = strdup(dir);
    else if (m->log_dir && asprintf(&m->dir, "%s/.snapshots", log_dir) < 0) m->dir = NULL;
    if (!m->log_dir || !m->dir) {
        tk_snapmgr_close(m);
        return tk_fail(err, TK_NOMEM, "snapshot_manager: out of memory");
    }
    if (tk_mkdir_p(m->dir, 0755) < 0 || stat(m->dir, &st) < 0) {
        rc = tk_fail_errno(err, errno, "create %s", m->dir);
        tk_snapmgr_close(m);
        return rc;
    }
    if (!S_ISDIR(st.st_mode)) {
        rc = tk_fail(err, TK_INVALID, "snapshot_manager: %s is not a directory", m->dir);
        tk_snapmgr_close(m);
        return rc;
    }
    if ((rc = locked_catalog(m, &lock_fd, &snaps, &n, err)) != TK_OK) {
        tk_snapmgr_close(m);
        return rc;
    }
    remove_leftovers(m);
    tk_dirlock_release(lock_fd);
    tk_snapshot_list_free(snaps, n);
    *out = m;
    return TK_OK;
}

void tk_snapmgr_close(tk_snapmgr *m) {
    if (!m) return;
    free(m->log_dir);
    free(m->dir);
    free(m);
}

const char *tk_snapmgr_dir(const tk_snapmgr *m) { return m->dir; }

/* ------------------------------------------------------------------ */
/* Placing files                                                        */
/* ------------------------------------------------------------------ */

typedef struct progress {
    tk_progress_fn fn;
    void *ud;
    uint64_t done, total;
} progress;

static void advance(progress *p, uint64_t bytes) {
    p->done += bytes;
    if (p->fn) p->fn(p->ud, p->done, p->total);
}

/* Copies len bytes of src (a descriptor) into a new file dst. */
static tk_code copy_fd_to(int src, const char *src_name, const char *dst, uint64_t len,
                          tk_err *err) {
    int fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644), e;
    if (fd < 0) return tk_fail_errno(err, errno, "create %s", dst);
    if (tk_copy_range(src, fd, len) < 0) {
        e = errno;
        close(fd);
        return tk_fail_errno(err, e, "copy %s to %s", src_name, dst);
    }
    if (close(fd) < 0) return tk_fail_errno(err, errno, "write %s", dst);
    return TK_OK;
}

#define WHOLE_FILE UINT64_MAX

/* Links src to dst, or copies its first len bytes (WHOLE_FILE: all of it)
 * when linking is not possible (another filesystem) or not wanted (copy
 * mode). */
static tk_code place(const char *src, const char *dst, uint64_t len, int link_ok, tk_err *err) {
    int fd;
    tk_code rc;
    if (link_ok) {
        if (link(src, dst) == 0) return TK_OK;
        if (errno != EXDEV && errno != EPERM && errno != EMLINK && errno != ENOTSUP)
            return tk_fail_errno(err, errno, "link %s to %s", src, dst);
    }
    if ((fd = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
        return tk_fail_errno(err, errno, "open %s", src);
    if (len == WHOLE_FILE) {
        struct stat st;
        if (fstat(fd, &st) < 0) {
            rc = tk_fail_errno(err, errno, "stat %s", src);
            close(fd);
            return rc;
        }
        len = (uint64_t)st.st_size;
    }
    rc = copy_fd_to(fd, src, dst, len, err);
    close(fd);
    return rc;
}

static tk_code write_new(const char *path, const unsigned char *buf, size_t len, tk_err *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return tk_fail_errno(err, errno, "create %s", path);
    if (tk_write_all(fd, buf, len) < 0) {
        int e = errno;
        close(fd);
        return tk_fail_errno(err, e, "write %s", path);
    }
    if (close(fd) < 0) return tk_fail_errno(err, errno, "write %s", path);
    return TK_OK;
}

/* Size and CRC32C of a whole file. */
static tk_code file_sum(const char *path, uint64_t *size, uint32_t *crc, tk_err *err) {
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), e;
    if (fd < 0) return tk_fail_errno(err, errno, "open %s", path);
    if (fstat(fd, &st) < 0 || tk_file_crc(fd, (uint64_t)st.st_size, crc) < 0) {
        e = errno;
        close(fd);
        return tk_fail_errno(err, e, "read %s", path);
    }
    close(fd);
    *size = (uint64_t)st.st_size;
    return TK_OK;
}

static tk_code fsync_path(const char *path, tk_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), e;
    if (fd < 0) return tk_fail_errno(err, errno, "open %s", path);
    if (fsync(fd) < 0) {
        e = errno;
        close(fd);
        return tk_fail_errno(err, e, "fsync %s", path);
    }
    close(fd);
    return TK_OK;
}

/* fsyncs every file of a directory, then the directory. */
static tk_code fsync_each(const char *dir, tk_err *err) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[PATH_MAX];
    tk_code rc = TK_OK;
    if (!d) return tk_fail_errno(err, errno, "open %s", dir);
    while (rc == TK_OK && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        if (tk_path_join(path, sizeof path, dir, de->d_name) < 0) continue;
        rc = fsync_path(path, err);
    }
    closedir(d);
    if (rc == TK_OK && tk_fsync_dir(dir) < 0) rc = tk_fail_errno(err, errno, "fsync %s", dir);
    return rc;
}

/* Makes a freshly built directory durable: its files -- hard links to the
 * log's sealed segments among them, whose data a log with sync = "none"
 * may still hold in the page cache -- and their names.  One syncfs(2)
 * covers every file at once; an fsync per file costs a device cache flush
 * each, which made a link-mode snapshot's cost grow with the number of
 * segments.  The price: syncfs also writes back unrelated dirty data of
 * that filesystem.  Where syncfs is missing, fall back to fsync per file. */
static tk_code sync_tree(const char *dir, tk_err *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), e;
    if (fd < 0) return tk_fail_errno(err, errno, "open %s", dir);
    if (syncfs(fd) < 0) {
        e = errno;
        close(fd);
        if (e == ENOSYS) return fsync_each(dir, err);
        return tk_fail_errno(err, e, "sync %s", dir);
    }
    if (fsync(fd) < 0) {
        e = errno;
        close(fd);
        return tk_fail_errno(err, e, "fsync %s", dir);
    }
    close(fd);
    return TK_OK;
}

/* ------------------------------------------------------------------ */
/* Create                                                               */
/* ------------------------------------------------------------------ */

typedef struct build {
    tk_manifest man;
    size_t cap;
} build;

static tk_code add_file(build *b, const char *name, uint64_t size, uint32_t crc, tk_err *err) {
    if (b->man.nfiles == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        tk_mfile *f = realloc(b->man.files, cap * sizeof *f);
        if (!f) return tk_fail(err, TK_NOMEM, "snapshot: out of memory");
        b->man.files = f;
        b->cap = cap;
    }
    tk_mfile *f = &b->man.files[b->man.nfiles++];
    snprintf(f->name, sizeof f->name, "%s", name);
    f->size = size;
    f->crc = crc;
    b->man.snap.total_size += size;
    return TK_OK;
}

/* The size and CRC the log knows for a sealed segment's index file
 * (extension i: 1 .index, 2 .timeindex), when the placed file still has
 * that size; else 0 and the caller reads the file. */
static int known_sum(const tk_cut_seg *cs, int i, const char *dst, uint64_t *size,
                     uint32_t *crc) {
    struct stat st;
    uint64_t want = i == 1 ? cs->idx_size : cs->tim_size;
    if (!cs->icrc_known || lstat(dst, &st) < 0 || (uint64_t)st.st_size != want) return 0;
    *size = want;
    *crc = i == 1 ? cs->idx_crc : cs->tim_crc;
    return 1;
}

static tk_code place_sealed(const tk_snapmgr *m, const tk_cut *cut, const tk_cut_seg *cs,
                            const char *tmp, build *b, progress *pg, tk_err *err) {
    static const char *const ext[3] = { ".log", ".index", ".timeindex" };
    for (int i = 0; i < 3; i++) {
        char src[PATH_MAX], dst[PATH_MAX], name[48];
        uint64_t size = cs->size;
        uint32_t crc = cs->log_crc;
        tk_code rc;
        snprintf(name, sizeof name, "%020" PRId64 "%s", cs->base, ext[i]);
        if (tk_path_join(src, sizeof src, cut->dir, name) < 0 ||
            tk_path_join(dst, sizeof dst, tmp, name) < 0)
            return tk_fail_errno(err, ENAMETOOLONG, "snapshot %s", cut->dir);
        rc = place(src, dst, i == 0 ? size : WHOLE_FILE, m->mode == TK_SNAP_LINK, err);
        if (rc == TK_NOT_FOUND && i > 0) continue;     /* derived: rebuilt on restore */
        if (rc != TK_OK) return rc;
        if (i > 0 && !known_sum(cs, i, dst, &size, &crc) &&
            (rc = file_sum(dst, &size, &crc, err)) != TK_OK)
            return rc;
        if ((rc = add_file(b, name, size, crc, err)) != TK_OK) return rc;
        if (i == 0) advance(pg, size);             /* progress counts .log bytes */
    }
    return TK_OK;
}

static tk_code place_active(const tk_cut *cut, const tk_cut_seg *cs, const char *tmp,
                            build *b, progress *pg, tk_err *err) {
    static const char *const ext[3] = { ".log", ".index", ".timeindex" };
    for (int i = 0; i < 3; i++) {
        char dst[PATH_MAX], name[48];
        tk_code rc;
        uint32_t crc;
        uint64_t size;
        snprintf(name, sizeof name, "%020" PRId64 "%s", cs->base, ext[i]);
        if (tk_path_join(dst, sizeof dst, tmp, name) < 0)
            return tk_fail_errno(err, ENAMETOOLONG, "snapshot %s", cut->dir);
        if (i == 0) {
            rc = copy_fd_to(cs->log_fd, name, dst, cs->size, err);
            size = cs->size;
            crc = cs->log_crc;
        } else {
            const unsigned char *buf = i == 1 ? cs->idx : cs->tim;
            size = i == 1 ? cs->idx_len : cs->tim_len;
            rc = write_new(dst, buf, (size_t)size, err);
            crc = tk_crc32c(0, buf, (size_t)size);
        }
        if (rc != TK_OK) return rc;
        if ((rc = add_file(b, name, size, crc, err)) != TK_OK) return rc;
        if (i == 0) advance(pg, size);
    }
    return TK_OK;
}

static tk_code build_snapshot(const tk_snapmgr *m, const tk_cut *cut, const char *tmp,
                              build *b, progress *pg, tk_err *err) {
    tk_snapshot *s = &b->man.snap;
    tk_code rc = TK_OK;
    char path[PATH_MAX];
    if (!(s->segment_offsets = calloc(cut->n + 1, sizeof(int64_t))))
        return tk_fail(err, TK_NOMEM, "snapshot: out of memory");
    for (size_t i = 0; i < cut->n; i++) pg->total += cut->segs[i].size;
    for (size_t i = 0; i < cut->n && rc == TK_OK; i++) {
        const tk_cut_seg *cs = &cut->segs[i];
        if (cs->sealed && cs->next == cs->base) continue;
        s->segment_offsets[s->num_segments++] = cs->base;
        rc = cs->sealed ? place_sealed(m, cut, cs, tmp, b, pg, err)
                        : place_active(cut, cs, tmp, b, pg, err);
        if (rc == TK_OK && i == 0) TK_FAULT("create.placing");
    }
    if (rc != TK_OK) return rc;
    TK_FAULT("create.placed");
    s->base_offset = cut->base_offset;
    s->high_water_mark = cut->high_water_mark;
    if (tk_path_join(path, sizeof path, tmp, MANIFEST) < 0)
        return tk_fail_errno(err, ENAMETOOLONG, "snapshot %s", tmp);
    if ((rc = tk_manifest_write(path, &b->man, err)) != TK_OK) return rc;
    TK_FAULT("create.manifest");
    return sync_tree(tmp, err);
}

static tk_code too_soon(const tk_snapmgr *m, const tk_snapshot *snaps, size_t n,
                        int64_t min_interval, int64_t now, tk_err *err) {
    if (min_interval <= 0 || n == 0) return TK_OK;
    int64_t age = now - snaps[0].timestamp;
    if (age >= min_interval) return TK_OK;
    return tk_fail(err, TK_TOO_SOON, "snapshot of %s: the newest snapshot %s is %" PRId64
                   " ms old, min_interval is %" PRId64 " ms", m->log_dir, snaps[0].id, age,
                   min_interval);
}

/* Step 5 and 6: rename into place and list it. */
static tk_code publish(const tk_snapmgr *m, const tk_create_opts *o, const char *tmp,
                       build *b, tk_err *err) {
    tk_snapshot *snaps, *all;
    size_t n;
    int lock_fd;
    char final[PATH_MAX];
    tk_code rc = locked_catalog(m, &lock_fd, &snaps, &n, err);
    if (rc != TK_OK) return rc;
    rc = too_soon(m, snaps, n, o->min_interval_ms, b->man.snap.timestamp, err);
    for (int tries = 0; rc == TK_OK; tries++) {
        if (snap_path(final, sizeof final, m, SNAP_PREFIX, b->man.snap.id, NULL) < 0) {
            rc = tk_fail_errno(err, errno, "snapshot %s", m->dir);
            break;
        }
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_NOREPLACE) == 0) break;
        if (errno != EEXIST || tries > 8) {
            rc = tk_fail_errno(err, errno, "rename %s to %s", tmp, final);
            break;
        }
        /* Same id made by another process: pick another suffix.  The
         * manifest names the id, so it is rewritten. */
        char path[PATH_MAX];
        new_id(b->man.snap.id, sizeof b->man.snap.id, b->man.snap.timestamp);
        if (tk_path_join(path, sizeof path, tmp, MANIFEST) < 0 ||
            (rc = tk_manifest_write(path, &b->man, err)) != TK_OK)
            rc = rc != TK_OK ? rc : tk_fail_errno(err, ENAMETOOLONG, "snapshot %s", tmp);
    }
    if (rc == TK_OK && tk_fsync_dir(m->dir) < 0) rc = tk_fail_errno(err, errno, "fsync %s", m->dir);
    if (rc == TK_OK) TK_FAULT("create.renamed");
    if (rc == TK_OK) {
        if (!(all = calloc(n + 1, sizeof *all)) || tk_snapshot_copy(&all[0], &b->man.snap) < 0) {
            free(all);
            rc = tk_fail(err, TK_NOMEM, "snapshot: out of memory");
        } else {
            memcpy(all + 1, snaps, n * sizeof *snaps);
            qsort(all, n + 1, sizeof *all, newest_first);
            rc = publish_catalog(m, all, n + 1, err);
            tk_snapshot_list_free(all, n + 1);      /* owned snaps' entries */
            free(snaps);
            snaps = NULL;
            n = 0;
        }
    }
    if (rc == TK_OK) TK_FAULT("create.published");
    tk_snapshot_list_free(snaps, n);
    tk_dirlock_release(lock_fd);
    return rc;
}

tk_code tk_snap_create(tk_snapmgr *m, tk_log *log, const tk_create_opts *opts,
                       tk_snapshot *out, tk_err *err) {
    tk_create_opts defaults = { 0, NULL, NULL, NULL };
    build b;
    tk_cut cut;
    progress pg;
    tk_snapshot *snaps;
    size_t n;
    int lock_fd, tmp_fd;
    char tmp[PATH_MAX];
    tk_code rc;

    if (!opts) opts = &defaults;
    if (opts->label && strlen(opts->label) >= TK_SNAP_LABEL_MAX)
        return tk_fail(err, TK_INVALID, "snapshot: label is longer than %d bytes",
                       TK_SNAP_LABEL_MAX - 1);
    memset(&b, 0, sizeof b);
    memset(&pg, 0, sizeof pg);
    pg.fn = opts->progress;
    pg.ud = opts->progress_ud;
    b.man.snap.mode = m->mode;
    if (opts->label) snprintf(b.man.snap.label, sizeof b.man.snap.label, "%s", opts->label);

    /* Step 1-2 under the metadata lock: a manager opening meanwhile sweeps
     * .tmp-* directories, and must find ours already claimed. */
    if ((rc = locked_catalog(m, &lock_fd, &snaps, &n, err)) != TK_OK) return rc;
    b.man.snap.timestamp = now_ms();
    rc = too_soon(m, snaps, n, opts->min_interval_ms, b.man.snap.timestamp, err);
    tk_snapshot_list_free(snaps, n);
    new_id(b.man.snap.id, sizeof b.man.snap.id, b.man.snap.timestamp);
    if (rc == TK_OK && snap_path(tmp, sizeof tmp, m, ".tmp-", b.man.snap.id, NULL) < 0)
        rc = tk_fail_errno(err, errno, "snapshot %s", m->dir);
    if (rc == TK_OK && mkdir(tmp, 0755) < 0) rc = tk_fail_errno(err, errno, "create %s", tmp);
    if (rc == TK_OK && (tmp_fd = claim_dir(tmp, 0)) < 0) {
        rc = tk_fail_errno(err, errno, "lock %s", tmp);
        tk_rmtree(tmp);
    }
    tk_dirlock_release(lock_fd);
    if (rc != TK_OK) return rc;
    TK_FAULT("create.tmpdir");
    rc = tk_log_cut(log, &cut, err);
    if (rc == TK_OK) {
        TK_FAULT("create.cut");
        rc = build_snapshot(m, &cut, tmp, &b, &pg, err);
        tk_cut_free(&cut);
    }
    if (rc == TK_OK) rc = publish(m, opts, tmp, &b, err);
    if (rc != TK_OK) tk_rmtree(tmp);
    close(tmp_fd);
    if (rc == TK_OK && out) {
        *out = b.man.snap;
        b.man.snap.segment_offsets = NULL;
    }
    tk_manifest_free(&b.man);
    return rc;
}

/* ------------------------------------------------------------------ */
/* List, get, size                                                      */
/* ------------------------------------------------------------------ */

tk_code tk_snap_list(tk_snapmgr *m, tk_snapshot **out, size_t *n, tk_err *err) {
    int lock_fd;
    tk_code rc = locked_catalog(m, &lock_fd, out, n, err);
    if (rc == TK_OK) tk_dirlock_release(lock_fd);
    return rc;
}

static tk_code not_found(const tk_snapmgr *m, const char *id, tk_err *err) {
    return tk_fail(err, TK_NOT_FOUND, "snapshot %s not found in %s", id, m->dir);
}

tk_code tk_snap_get(tk_snapmgr *m, const char *id, tk_snapshot *out, tk_err *err) {
    tk_snapshot *snaps;
    size_t n;
    tk_code rc = tk_snap_check_id(id, err);
    if (rc != TK_OK) return rc;
    if ((rc = tk_snap_list(m, &snaps, &n, err)) != TK_OK) return rc;
    rc = not_found(m, id, err);
    for (size_t i = 0; i < n; i++)
        if (strcmp(snaps[i].id, id) == 0) {
            *out = snaps[i];
            snaps[i].segment_offsets = NULL;
            rc = TK_OK;
            break;
        }
    tk_snapshot_list_free(snaps, n);
    return rc;
}

tk_code tk_snap_total_size(tk_snapmgr *m, uint64_t *size, tk_err *err) {
    tk_snapshot *snaps;
    size_t n;
    tk_code rc = tk_snap_list(m, &snaps, &n, err);
    if (rc != TK_OK) return rc;
    *size = 0;
    for (size_t i = 0; i < n; i++) *size += snaps[i].total_size;
    tk_snapshot_list_free(snaps, n);
    return TK_OK;
}

/* ------------------------------------------------------------------ */
/* Delete and cleanup                                                   */
/* ------------------------------------------------------------------ */

/* Removes the listed snapshots (by index into snaps, marked in doomed)
 * with one catalog update.  Caller holds the lock; on return the
 * renamed directories are named in *trash for removal after unlocking. */
static tk_code unlist(const tk_snapmgr *m, tk_snapshot *snaps, size_t n, const int *doomed,
                      const char *step, char ***trash, size_t *ntrash, tk_err *err) {
    tk_snapshot *keep = calloc(n + 1, sizeof *keep);
    size_t nkeep = 0;
    tk_code rc = TK_OK;
    *trash = calloc(n + 1, sizeof **trash);
    *ntrash = 0;
    if (!keep || !*trash) {
        free(keep);
        return tk_fail(err, TK_NOMEM, "delete: out of memory");
    }
    for (size_t i = 0; i < n && rc == TK_OK; i++) {
        char from[PATH_MAX], to[PATH_MAX];
        if (!doomed[i]) { keep[nkeep++] = snaps[i]; continue; }
        if (snap_path(from, sizeof from, m, SNAP_PREFIX, snaps[i].id, NULL) < 0 ||
            snap_path(to, sizeof to, m, ".del-", snaps[i].id, NULL) < 0) {
            rc = tk_fail_errno(err, errno, "delete %s", snaps[i].id);
            break;
        }
        if (rename(from, to) < 0 && errno != ENOENT) {
            rc = tk_fail_errno(err, errno, "rename %s to %s", from, to);
            keep[nkeep++] = snaps[i];
            continue;
        }
        (*trash)[(*ntrash)++] = strdup(to);
    }
    if (*ntrash > 0) {
        TK_FAULT(step);
        tk_code prc = publish_catalog(m, keep, nkeep, err);
        if (rc == TK_OK) rc = prc;
    }
    free(keep);            /* the snapshots themselves still belong to snaps */
    return rc;
}

static void empty_trash(char **trash, size_t n, const char *step) {
    for (size_t i = 0; i < n; i++) {
        int fd;
        if (!trash[i]) continue;
        if (i == 0) TK_FAULT(step);
        fd = claim_dir(trash[i], 1);
        tk_rmtree(trash[i]);
        if (fd >= 0) close(fd);
        free(trash[i]);
    }
    free(trash);
}

static tk_code delete_marked(tk_snapmgr *m, tk_snapshot *snaps, size_t n, int *doomed,
                             int lock_fd, const char *what, size_t *deleted, tk_err *err) {
    char **trash = NULL, step[64];
    size_t ntrash = 0;
    tk_code rc;
    snprintf(step, sizeof step, "%s.renamed", what);
    rc = unlist(m, snaps, n, doomed, step, &trash, &ntrash, err);
    if (rc == TK_OK && ntrash > 0) {
        snprintf(step, sizeof step, "%s.published", what);
        TK_FAULT(step);
    }
    tk_dirlock_release(lock_fd);
    if (deleted) *deleted = ntrash;
    snprintf(step, sizeof step, "%s.removing", what);
    empty_trash(trash, ntrash, step);
    return rc;
}

tk_code tk_snap_delete_many(tk_snapmgr *m, const char *const *ids, size_t nids,
                            size_t *deleted, tk_err *err) {
    tk_snapshot *snaps;
    size_t n;
    int lock_fd, *doomed;
    tk_code rc;
    for (size_t i = 0; i < nids; i++)
        if ((rc = tk_snap_check_id(ids[i], err)) != TK_OK) return rc;
    if ((rc = locked_catalog(m, &lock_fd, &snaps, &n, err)) != TK_OK) return rc;
    if (!(doomed = calloc(n + 1, sizeof *doomed))) {
        tk_dirlock_release(lock_fd);
        tk_snapshot_list_free(snaps, n);
        return tk_fail(err, TK_NOMEM, "delete: out of memory");
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < nids; j++)
            if (strcmp(snaps[i].id, ids[j]) == 0) doomed[i] = 1;
    rc = delete_marked(m, snaps, n, doomed, lock_fd, nids == 1 ? "delete" : "cleanup",
                       deleted, err);
    free(doomed);
    tk_snapshot_list_free(snaps, n);
    return rc;
}

tk_code tk_snap_delete(tk_snapmgr *m, const char *id, tk_err *err) {
    size_t deleted = 0;
    tk_code rc = tk_snap_delete_many(m, &id, 1, &deleted, err);
    if (rc == TK_OK && deleted == 0) return not_found(m, id, err);
    return rc;
}

tk_code tk_snap_cleanup(tk_snapmgr *m, size_t max_snapshots, int64_t retention_ms,
                        size_t *deleted, tk_err *err) {
    tk_snapshot *snaps;
    size_t n;
    int lock_fd, *doomed;
    tk_code rc = locked_catalog(m, &lock_fd, &snaps, &n, err);
    if (rc != TK_OK) return rc;
    if (!(doomed = calloc(n + 1, sizeof *doomed))) {
        tk_dirlock_release(lock_fd);
        tk_snapshot_list_free(snaps, n);
        return tk_fail(err, TK_NOMEM, "cleanup: out of memory");
    }
    /* snaps is newest first; index 0, the newest, is never a victim. */
    for (size_t i = 1; i < n; i++) {
        if (max_snapshots > 0 && i >= max_snapshots) doomed[i] = 1;
        if (retention_ms >= 0 && snaps[0].timestamp - snaps[i].timestamp > retention_ms)
            doomed[i] = 1;
    }
    rc = delete_marked(m, snaps, n, doomed, lock_fd, "cleanup", deleted, err);
    free(doomed);
    tk_snapshot_list_free(snaps, n);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Verify                                                               */
/* ------------------------------------------------------------------ */

static int snapshot_exists(const tk_snapmgr *m, const char *id) {
    char path[PATH_MAX];
    struct stat st;
    return snap_path(path, sizeof path, m, SNAP_PREFIX, id, NULL) == 0 &&
           lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static tk_code read_manifest(const tk_snapmgr *m, const char *id, tk_manifest *man,
                             tk_err *err) {
    char path[PATH_MAX];
    struct stat st;
    tk_code rc = tk_snap_check_id(id, err);
    if (rc != TK_OK) return rc;
    if (snap_path(path, sizeof path, m, SNAP_PREFIX, id, NULL) < 0)
        return tk_fail_errno(err, errno, "snapshot %s", id);
    if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode)) return not_found(m, id, err);
    if (snap_path(path, sizeof path, m, SNAP_PREFIX, id, MANIFEST) < 0)
        return tk_fail_errno(err, errno, "snapshot %s", id);
    rc = tk_manifest_read(path, man, err);
    if (rc == TK_NOT_FOUND && !snapshot_exists(m, id)) return not_found(m, id, err);
    if (rc == TK_NOT_FOUND)
        return tk_fail(err, TK_CORRUPT, "snapshot %s: %s is missing", id, path);
    if (rc == TK_OK && strcmp(man->snap.id, id) != 0) {
        tk_manifest_free(man);
        return tk_fail(err, TK_CORRUPT, "snapshot %s: %s names snapshot %s", id, path,
                       man->snap.id);
    }
    return rc;
}

/* Checks one snapshot file against its manifest entry.  Verify and
 * restore take no lock against delete: a snapshot deleted under them is
 * NOT_FOUND, not CORRUPT. */
static tk_code check_file(const tk_snapmgr *m, const char *id, const tk_mfile *f,
                          progress *pg, tk_err *err) {
    char path[PATH_MAX];
    uint64_t size;
    uint32_t crc;
    tk_err scratch;
    if (snap_path(path, sizeof path, m, SNAP_PREFIX, id, f->name) < 0)
        return tk_fail_errno(err, errno, "verify %s", id);
    tk_code rc = file_sum(path, &size, &crc, &scratch);
    if (rc == TK_NOT_FOUND && !snapshot_exists(m, id))
        return tk_fail(err, TK_NOT_FOUND, "snapshot %s was deleted while being read", id);
    if (rc == TK_NOT_FOUND) return tk_fail(err, TK_CORRUPT, "verify %s: %s is missing", id, path);
    if (rc != TK_OK) { *err = scratch; return rc; }
    if (size != f->size)
        return tk_fail(err, TK_CORRUPT, "verify %s: %s has %" PRIu64 " bytes, the manifest "
                       "says %" PRIu64, id, path, size, f->size);
    if (crc != f->crc)
        return tk_fail(err, TK_CORRUPT, "verify %s: %s fails its checksum (crc32c %08" PRIx32
                       ", the manifest says %08" PRIx32 ")", id, path, crc, f->crc);
    advance(pg, size);
    return TK_OK;
}

tk_code tk_snap_verify(tk_snapmgr *m, const char *id, tk_progress_fn fn, void *ud,
                       tk_err *err) {
    tk_manifest man;
    progress pg = { fn, ud, 0, 0 };
    tk_code rc = read_manifest(m, id, &man, err);
    if (rc != TK_OK) return rc;
    for (size_t i = 0; i < man.nfiles; i++) pg.total += man.files[i].size;
    for (size_t i = 0; i < man.nfiles && rc == TK_OK; i++)
        rc = check_file(m, id, &man.files[i], &pg, err);
    tk_manifest_free(&man);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Restore                                                              */
/* ------------------------------------------------------------------ */

/* Verifies every file of the snapshot, then links or copies it into dir. */
static tk_code fill_restore(const tk_snapmgr *m, const tk_manifest *man, const char *dir,
                            progress *pg, tk_err *err) {
    const char *id = man->snap.id;
    for (size_t i = 0; i < man->nfiles; i++) pg->total += man->files[i].size;
    for (size_t i = 0; i < man->nfiles; i++) {
        const tk_mfile *f = &man->files[i];
        char src[PATH_MAX], dst[PATH_MAX];
        tk_code rc = check_file(m, id, f, pg, err);
        if (rc == TK_CORRUPT) {
            char why[sizeof err->msg];
            snprintf(why, sizeof why, "%s", err->msg);
            return tk_fail(err, TK_CORRUPT, "restore %s refused: %s", id, why);
        }
        if (rc != TK_OK) return rc;
        if (snap_path(src, sizeof src, m, SNAP_PREFIX, id, f->name) < 0 ||
            tk_path_join(dst, sizeof dst, dir, f->name) < 0)
            return tk_fail_errno(err, ENAMETOOLONG, "restore %s", id);
        if ((rc = place(src, dst, f->size, m->mode == TK_SNAP_LINK, err)) != TK_OK) return rc;
        if (i == 0) TK_FAULT("restore.placing");
    }
    TK_FAULT("restore.placed");
    return TK_OK;
}

/* upto_*: open the new directory as a log and cut it.  The log copies
 * any file it shares with the snapshot before changing it. */
static tk_code apply_upto(const tk_manifest *man, const char *dir, const tk_restore_opts *o,
                          tk_err *err) {
    tk_log *log;
    int64_t cut = -1;
    tk_code rc;
    if (o->upto_offset < 0 && !o->has_upto_timestamp) return TK_OK;
    if ((rc = tk_log_open(dir, NULL, &log, err)) != TK_OK) return rc;
    if (o->upto_offset >= 0) {
        cut = o->upto_offset;
        if (cut < man->snap.base_offset || cut > man->snap.high_water_mark)
            rc = tk_fail(err, TK_OUT_OF_RANGE, "restore %s: upto_offset %" PRId64 " is outside "
                         "[%" PRId64 ", %" PRId64 "]", man->snap.id, cut,
                         man->snap.base_offset, man->snap.high_water_mark);
    }
    if (rc == TK_OK && o->has_upto_timestamp) {
        int64_t t;
        rc = o->upto_timestamp == INT64_MAX ? (t = man->snap.high_water_mark, TK_OK)
             : tk_log_offset_for_time(log, o->upto_timestamp + 1, &t, err);
        if (rc == TK_OK && (cut < 0 || t < cut)) cut = t;
    }
    if (rc == TK_OK && cut >= 0) rc = tk_log_truncate(log, cut, err);
    if (rc == TK_OK) rc = tk_log_sync(log, err);
    tk_log_close(log);
    TK_FAULT("restore.truncated");
    return rc;
}

static tk_code build_restore(const tk_snapmgr *m, const tk_manifest *man, const char *dir,
                             const tk_restore_opts *o, tk_err *err) {
    progress pg = { o->progress, o->progress_ud, 0, 0 };
    tk_code rc = fill_restore(m, man, dir, &pg, err);
    if (rc == TK_OK) rc = apply_upto(man, dir, o, err);
    if (rc == TK_OK) rc = sync_tree(dir, err);
    return rc;
}

/* What a restore target may be: missing, or an empty directory. */
static tk_code check_target(const char *target, int *exists, tk_err *err) {
    struct stat st;
    DIR *d;
    struct dirent *de;
    *exists = 0;
    if (lstat(target, &st) < 0) {
        if (errno == ENOENT) return TK_OK;
        return tk_fail_errno(err, errno, "restore to %s", target);
    }
    if (!S_ISDIR(st.st_mode))
        return tk_fail(err, TK_EXISTS, "restore to %s: it exists and is not a directory", target);
    *exists = 1;
    if (!(d = opendir(target))) return tk_fail_errno(err, errno, "restore to %s", target);
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        closedir(d);
        return tk_fail(err, TK_NOT_EMPTY, "restore to %s: the directory is not empty "
                       "(use replace to restore a log in place)", target);
    }
    closedir(d);
    return TK_OK;
}

static void split_path(const char *path, char *parent, size_t pcap, char *base, size_t bcap) {
    char buf[PATH_MAX];
    size_t n;
    snprintf(buf, sizeof buf, "%s", path);
    n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = '\0';
    char *slash = strrchr(buf, '/');
    if (!slash) { snprintf(parent, pcap, "."); snprintf(base, bcap, "%s", buf); }
    else if (slash == buf) { snprintf(parent, pcap, "/"); snprintf(base, bcap, "%s", slash + 1); }
    else { *slash = '\0'; snprintf(parent, pcap, "%s", buf); snprintf(base, bcap, "%s", slash + 1); }
}

static tk_code restore_new(const tk_snapmgr *m, const tk_manifest *man, const char *target,
                           const tk_restore_opts *o, tk_err *err) {
    char parent[PATH_MAX], base[PATH_MAX], tmp[PATH_MAX];
    int exists, fd;
    tk_code rc = check_target(target, &exists, err);
    if (rc != TK_OK) return rc;
    split_path(target, parent, sizeof parent, base, sizeof base);
    if (tk_mkdir_p(parent, 0755) < 0) return tk_fail_errno(err, errno, "create %s", parent);
    if (snprintf(tmp, sizeof tmp, "%s/.%s.restore-%s-%08" PRIx32, parent, base, man->snap.id,
                 random32()) >= (int)sizeof tmp)
        return tk_fail_errno(err, ENAMETOOLONG, "restore to %s", target);
    if (mkdir(tmp, 0755) < 0) return tk_fail_errno(err, errno, "create %s", tmp);
    if ((fd = claim_dir(tmp, 0)) < 0) {
        rc = tk_fail_errno(err, errno, "lock %s", tmp);
        tk_rmtree(tmp);
        return rc;
    }
    TK_FAULT("restore.tmpdir");
    rc = build_restore(m, man, tmp, o, err);
    if (rc == TK_OK && rename(tmp, target) < 0)
        rc = (errno == ENOTEMPTY || errno == EEXIST)
             ? tk_fail(err, TK_NOT_EMPTY, "restore to %s: the directory is not empty", target)
             : tk_fail_errno(err, errno, "rename %s to %s", tmp, target);
    if (rc == TK_OK) TK_FAULT("restore.renamed");
    if (rc == TK_OK && tk_fsync_dir(parent) < 0) rc = tk_fail_errno(err, errno, "fsync %s", parent);
    if (rc != TK_OK) tk_rmtree(tmp);
    close(fd);
    return rc;
}

/* restore.list: the segment files the restored log consists of. */
static tk_code write_list(const char *dir, tk_err *err) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[PATH_MAX], *text = NULL;
    size_t len = 0;
    FILE *mem;
    tk_code rc;
    if (!d) return tk_fail_errno(err, errno, "open %s", dir);
    if (!(mem = open_memstream(&text, &len))) {
        closedir(d);
        return tk_fail(err, TK_NOMEM, "restore: out of memory");
    }
    while ((de = readdir(d)) != NULL)
        if (tk_is_segment_file(de->d_name)) fprintf(mem, "%s\n", de->d_name);
    closedir(d);
    fclose(mem);
    if (tk_path_join(path, sizeof path, dir, TK_RESTORE_LIST) < 0 ||
        tk_replace_file(path, text, len, 1) < 0)
        rc = tk_fail_errno(err, errno, "write %s/" TK_RESTORE_LIST, dir);
    else
        rc = TK_OK;
    free(text);
    return rc;
}

static tk_code restore_in_place(const tk_snapmgr *m, const tk_manifest *man,
                                const char *target, const tk_restore_opts *o, tk_err *err) {
    char tmp[PATH_MAX], ready[PATH_MAX];
    int lock_fd;
    tk_code rc = tk_dirlock_try(target, ".lock", &lock_fd, err);
    if (rc != TK_OK) return rc;
    if (tk_restore_pending(target) && (rc = tk_restore_apply(target, err)) != TK_OK) {
        tk_dirlock_release(lock_fd);
        return rc;
    }
    if (snprintf(tmp, sizeof tmp, "%s/.restore-tmp-%08" PRIx32, target, random32()) >= (int)sizeof tmp ||
        snprintf(ready, sizeof ready, "%s" TK_RESTORE_READY, target) >= (int)sizeof ready) {
        tk_dirlock_release(lock_fd);
        return tk_fail_errno(err, ENAMETOOLONG, "restore to %s", target);
    }
    tk_rmtree(ready);                   /* an uncommitted leftover cannot be here, but */
    if (mkdir(tmp, 0755) < 0) {
        rc = tk_fail_errno(err, errno, "create %s", tmp);
        tk_dirlock_release(lock_fd);
        return rc;
    }
    TK_FAULT("inplace.tmpdir");
    rc = build_restore(m, man, tmp, o, err);
    if (rc == TK_OK) rc = write_list(tmp, err);
    if (rc == TK_OK) TK_FAULT("inplace.built");
    if (rc == TK_OK && rename(tmp, ready) < 0) rc = tk_fail_errno(err, errno, "rename %s", tmp);
    if (rc == TK_OK && tk_fsync_dir(target) < 0) rc = tk_fail_errno(err, errno, "fsync %s", target);
    if (rc != TK_OK) {
        tk_rmtree(tmp);
        tk_dirlock_release(lock_fd);
        return rc;
    }
    TK_FAULT("inplace.committed");
    rc = tk_restore_apply(target, err);
    tk_dirlock_release(lock_fd);
    return rc;
}

tk_code tk_snap_restore(tk_snapmgr *m, const char *id, const char *target,
                        const tk_restore_opts *opts, tk_err *err) {
    tk_restore_opts defaults = { 0, -1, -1, 0, NULL, NULL };
    tk_manifest man;
    struct stat st;
    tk_code rc;
    if (!opts) opts = &defaults;
    if (!target || !*target) return tk_fail(err, TK_INVALID, "restore %s: empty target", id ? id : "");
    if ((rc = read_manifest(m, id, &man, err)) != TK_OK) return rc;
    if (opts->replace && stat(target, &st) == 0 && S_ISDIR(st.st_mode))
        rc = restore_in_place(m, &man, target, opts, err);
    else
        rc = restore_new(m, &man, target, opts, err);
    tk_manifest_free(&man);
    return rc;
}

#ifdef TK_FAULT_INJECTION
#include <signal.h>
void tk_fault_point(const char *name) {
    const char *want = getenv("TAKHIN_FAULT");
    if (want && strcmp(want, name) == 0) raise(SIGKILL);
}
#endif
