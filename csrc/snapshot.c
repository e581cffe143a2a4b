/*
 * snapshot.c -- point-in-time snapshots of a log.
 *
 * Layout (docs/FORMAT.md):
 *
 *     <snapdir>/.lock                   metadata lock (flock, waited for)
 *     <snapdir>/.seq                    the last creation number handed out
 *     <snapdir>/snapshots.json          catalog, newest first; rebuildable
 *     <snapdir>/snapshot-<id>/          one complete snapshot:
 *         manifest.json                 its record, every file's size and CRC32C
 *         00000000000000000000.log ...  segment files (hard links or copies)
 *     <snapdir>/.tmp-<id>/              a snapshot being built
 *     <snapdir>/.del-<id>/              a snapshot being removed
 *
 * Create.  Crash state after each step in brackets.
 *   1. Under the metadata lock, check min_interval, take the next
 *      creation number from .seq, mkdir .tmp-<id> and flock it
 *      (a live build).                                          [leftover]
 *   2. Release the metadata lock.
 *   3. Cut the log (appends wait only for this), link sealed
 *      segments, copy the active one up to the cut.  If the log's
 *      generation moved meanwhile (a truncate or restore can put
 *      other files under the same names), empty .tmp-<id> and cut
 *      again, three times at most, then fail with CONFLICT.    [leftover]
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
 *   5. Move the log's generation (state.h), so that read-only handles
 *      still open reload what is there now.
 * A writer opening the log after a crash past step 3 applies it again, so
 * the log is either the old one or the restored one, never a mix.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cursors.h"
#include "cut.h"
#include "error.h"
#include "fault.h"
#include "fs.h"
#include "job.h"
#include "lock.h"
#include "manifest.h"
#include "names.h"
#include "restore.h"
#include "segment.h"
#include "snapdir.h"
#include "state.h"
#include "sys.h"
#include "internal.h"

#define CREATE_ATTEMPTS 3

struct tk_snapmgr {
    char *log_dir;
    char *dir;
    tk_snap_mode mode;
    tk_jobs *jobs;              /* running background jobs: closing cancels them */
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

/* "<ms, 13 digits>-<8 hex>": sorts by time, unique across processes
 * (the final rename refuses to replace, and a clash is retried). */
static void new_id(char *out, size_t cap, int64_t ts) {
    snprintf(out, cap, "%013" PRId64 "-%08" PRIx32, ts, random32());
}

static int snap_path(char *out, size_t cap, const tk_snapmgr *m, const char *prefix,
                     const char *id, const char *file) {
    return tk_snapdir_path(out, cap, m->dir, prefix, id, file);
}

tk_code tk_snap_path(const tk_snapmgr *m, const char *id, char *out, size_t cap, tk_err *err) {
    tk_code rc = tk_snap_check_id(id, err);
    if (rc != TK_OK) return rc;
    if (snap_path(out, cap, m, TK_SNAP_PREFIX, id, NULL) < 0)
        return tk_fail_errno(err, errno, "snapshot %s", id);
    return TK_OK;
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

static int is_utf8(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2
                : (*p & 0xF8) == 0xF0 ? 3 : -1;
        uint32_t c;
        if (n < 0 || (n == 1 && *p < 0xC2)) return 0;
        c = n ? *p & (0x3F >> n) : *p;
        p++;
        for (int i = 0; i < n; i++, p++) {
            if ((*p & 0xC0) != 0x80) return 0;
            c = (c << 6) | (*p & 0x3F);
        }
        if ((n == 2 && c < 0x800) || (n == 3 && (c < 0x10000 || c > 0x10FFFF)) ||
            (c >= 0xD800 && c <= 0xDFFF))
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* The catalog                                                          */
/* ------------------------------------------------------------------ */

/* Newest first: by creation number, then (snapshots older than those
 * numbers) by timestamp.  Never by the wall clock alone: one snapshot
 * dated in the future must not stay "newest" for ever. */
static int newest_first(const void *a, const void *b) {
    const tk_snapshot *x = a, *y = b;
    if (x->seq != y->seq) return x->seq < y->seq ? 1 : -1;
    if (x->timestamp != y->timestamp) return x->timestamp < y->timestamp ? 1 : -1;
    return -strcmp(x->id, y->id);
}

/* Ids of the complete snapshot directories (snapshot-<id>). */
static tk_code list_snapshot_dirs(const tk_snapmgr *m, char ***ids, size_t *n, tk_err *err) {
    DIR *d = opendir(m->dir);
    struct dirent *de;
    size_t cap = 0, plen = strlen(TK_SNAP_PREFIX);
    tk_code rc = TK_OK;
    *ids = NULL;
    *n = 0;
    if (!d) return tk_fail_errno(err, errno, "open %s", m->dir);
    while ((de = readdir(d)) != NULL) {
        const char *id = de->d_name + plen;
        if (strncmp(de->d_name, TK_SNAP_PREFIX, plen) != 0) continue;
        if (tk_snap_check_id(id, NULL) != TK_OK) continue;
        if (*n == cap) {
            char **p = tk_realloc(*ids, (cap = cap ? cap * 2 : 16) * sizeof *p);
            if (!p) { rc = TK_NOMEM; break; }
            *ids = p;
        }
        if (!((*ids)[*n] = tk_strdup(id))) { rc = TK_NOMEM; break; }
        (*n)++;
    }
    closedir(d);
    if (rc != TK_OK) {
        for (size_t i = 0; i < *n; i++) free((*ids)[i]);
        free(*ids);
        *ids = NULL;
        *n = 0;
        return tk_fail(err, TK_NOMEM, "list %s: out of memory", m->dir);
    }
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

/* What can be known of a snapshot whose manifest cannot be read: its
 * timestamp from its id (or the directory's), the bytes it holds.  It
 * stays listed, counted and deletable; verify and restore say CORRUPT. */
static void damaged_entry(const tk_snapmgr *m, const char *id, tk_snapshot *s) {
    char path[PATH_MAX], file[PATH_MAX];
    struct stat st;
    DIR *d;
    struct dirent *de;
    memset(s, 0, sizeof *s);
    snprintf(s->id, sizeof s->id, "%s", id);
    s->damaged = 1;
    if (snap_path(path, sizeof path, m, TK_SNAP_PREFIX, id, NULL) < 0) return;
    if (strlen(id) > 13 && id[13] == '-' && strspn(id, "0123456789") == 13)
        s->timestamp = strtoll(id, NULL, 10);
    else if (stat(path, &st) == 0)
        s->timestamp = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
    if (!(d = opendir(path))) return;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.' && tk_path_join(file, sizeof file, path, de->d_name) == 0 &&
            lstat(file, &st) == 0 && S_ISREG(st.st_mode))
            s->total_size += (uint64_t)st.st_size;
    closedir(d);
}

/* Rebuilds the catalog from the manifests of the complete snapshots. */
static tk_code rebuild_catalog(const tk_snapmgr *m, char **ids, size_t nids,
                               tk_snapshot **out, size_t *n, tk_err *err) {
    tk_snapshot *snaps = tk_calloc(nids + 1, sizeof *snaps);
    char path[PATH_MAX];
    tk_code rc;
    if (!snaps) return tk_fail(err, TK_NOMEM, "rebuild %s/" TK_CATALOG_FILE ": out of memory", m->dir);
    for (size_t i = 0; i < nids; i++) {
        tk_manifest man;
        tk_err scratch;
        tk_code mrc = TK_IO;
        if (snap_path(path, sizeof path, m, TK_SNAP_PREFIX, ids[i], TK_MANIFEST_FILE) == 0)
            mrc = tk_manifest_read(path, &man, &scratch);
        if (mrc == TK_NOMEM) {          /* not damaged: we could not look */
            tk_snapshot_list_free(snaps, i);
            return tk_fail_pass(err, &scratch);
        }
        if (mrc == TK_OK) {
            if (strcmp(man.snap.id, ids[i]) == 0) {
                snaps[i] = man.snap;
                man.snap.segment_offsets = NULL;
            } else {
                damaged_entry(m, ids[i], &snaps[i]);
            }
            tk_manifest_free(&man);
        } else {
            damaged_entry(m, ids[i], &snaps[i]);
        }
    }
    qsort(snaps, nids, sizeof *snaps, newest_first);
    if (tk_path_join(path, sizeof path, m->dir, TK_CATALOG_FILE) < 0) path[0] = '\0';
    rc = tk_catalog_write(path, snaps, nids, err);
    if (rc != TK_OK) { tk_snapshot_list_free(snaps, nids); return rc; }
    *out = snaps;
    *n = nids;
    return TK_OK;
}

/* Reads the catalog; when it is missing, damaged, or disagrees with the
 * snapshot directories, rebuilds it.  Caller holds the metadata lock. */
static tk_code load_catalog(const tk_snapmgr *m, tk_snapshot **out, size_t *n, tk_err *err) {
    char path[PATH_MAX], **ids;
    size_t nids;
    tk_err scratch;
    tk_code rc;
    if (tk_path_join(path, sizeof path, m->dir, TK_CATALOG_FILE) < 0)
        return tk_fail_errno(err, errno, "open %s", m->dir);
    if ((rc = list_snapshot_dirs(m, &ids, &nids, err)) != TK_OK) return rc;
    rc = tk_catalog_read(path, out, n, &scratch);
    if (rc == TK_OK && catalog_matches(*out, *n, ids, nids)) {
        free_ids(ids, nids);
        qsort(*out, *n, sizeof **out, newest_first);
        return TK_OK;
    }
    if (rc == TK_OK) tk_snapshot_list_free(*out, *n);
    if (rc != TK_OK && rc != TK_NOT_FOUND && rc != TK_CORRUPT) {
        free_ids(ids, nids);
        return tk_fail_pass(err, &scratch);
    }
    rc = rebuild_catalog(m, ids, nids, out, n, err);
    free_ids(ids, nids);
    return rc;
}

static tk_code publish_catalog(const tk_snapmgr *m, const tk_snapshot *snaps, size_t n,
                               tk_err *err) {
    char path[PATH_MAX];
    if (tk_path_join(path, sizeof path, m->dir, TK_CATALOG_FILE) < 0)
        return tk_fail_errno(err, errno, "write %s", m->dir);
    return tk_catalog_write(path, snaps, n, err);       /* atomic and durable */
}

static tk_code meta_lock(const tk_snapmgr *m, int *fd, tk_err *err) {
    return tk_dirlock_wait(m->dir, TK_LOCK_FILE, fd, err);
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

/* The next creation number: one past both the counter file and every
 * listed snapshot (the counter is a hint; a lost update is caught up).
 * Caller holds the lock. */
static tk_code next_seq(const tk_snapmgr *m, const tk_snapshot *snaps, size_t n, int64_t *seq,
                        tk_err *err) {
    char path[PATH_MAX], buf[32];
    int64_t v = 0;
    FILE *f;
    if (tk_path_join(path, sizeof path, m->dir, TK_SNAP_SEQ_FILE) < 0)
        return tk_fail_errno(err, errno, "snapshot %s", m->dir);
    if ((f = fopen(path, "r")) != NULL) {
        if (fgets(buf, sizeof buf, f)) v = strtoll(buf, NULL, 10);
        fclose(f);
    }
    if (v < 0) v = 0;
    for (size_t i = 0; i < n; i++)
        if (snaps[i].seq > v) v = snaps[i].seq;
    *seq = v + 1;
    snprintf(buf, sizeof buf, "%" PRId64 "\n", *seq);
    if (tk_replace_file(path, buf, strlen(buf), 0) < 0)
        return tk_fail_errno(err, errno, "write %s", path);
    return TK_OK;
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
        if (strncmp(de->d_name, TK_SNAP_TMP, strlen(TK_SNAP_TMP)) != 0 &&
            strncmp(de->d_name, TK_SNAP_DEL, strlen(TK_SNAP_DEL)) != 0)
            continue;
        if (tk_path_join(path, sizeof path, m->dir, de->d_name) < 0) continue;
        if ((fd = claim_dir(path, 0)) < 0) continue;    /* still being worked on */
        tk_rmtree(path);
        close(fd);
    }
    closedir(d);
}

static int same_dir(const char *a, const char *b) {
    struct stat x, y;
    return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
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
    /* The log's own directory: its .lock would be the metadata lock too,
     * and snapshot directories would sit among the segments. */
    if (dir && same_dir(dir, log_dir))
        return tk_fail(err, TK_INVALID, "snapshot_manager %s: the snapshot directory %s is the "
                       "log's own directory", log_dir, dir);
    if (!(m = tk_calloc(1, sizeof *m))) return tk_fail(err, TK_NOMEM, "snapshot_manager %s: out of memory", log_dir);
    m->mode = mode;
    m->log_dir = tk_strdup(log_dir);
    m->jobs = tk_jobs_new();
    if (dir) m->dir = tk_strdup(dir);
    else if (m->log_dir && asprintf(&m->dir, "%s/" TK_SNAP_DEFAULT_DIR, log_dir) < 0) m->dir = NULL;
    if (!m->log_dir || !m->dir || !m->jobs) {
        tk_snapmgr_close(m);
        return tk_fail(err, TK_NOMEM, "snapshot_manager %s: out of memory", log_dir);
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
    tk_jobs_close(m->jobs);             /* cancels and waits for its jobs */
    free(m->log_dir);
    free(m->dir);
    free(m);
}

const char *tk_snapmgr_dir(const tk_snapmgr *m) { return m->dir; }

void tk_create_opts_init(tk_create_opts *o) {
    memset(o, 0, sizeof *o);
    o->min_interval_ms = -1;
}

void tk_restore_opts_init(tk_restore_opts *o) {
    memset(o, 0, sizeof *o);
    o->upto_offset = TK_NONE;
    o->upto_timestamp = TK_NONE;
}

/* ------------------------------------------------------------------ */
/* Placing files                                                        */
/* ------------------------------------------------------------------ */

/* How far an operation got.  Work on any thread calls step(); the caller's
 * callback (Lua) only ever runs on the calling thread, from report(). */
typedef struct progress {
    tk_progress_fn fn;          /* the caller's callback, or NULL */
    void *ud;
    uint64_t done, total;       /* done: atomic */
    tk_job *job;                /* a background job: its progress and cancel flag */
    const char *what;           /* for a cancel's message: "snapshot of DIR", ... */
} progress;

static void report(void *arg) {
    progress *p = arg;
    if (p->fn) p->fn(p->ud, __atomic_load_n(&p->done, __ATOMIC_RELAXED), p->total);
}

static tk_code canceled(const progress *p, tk_err *err) {
    return tk_fail(err, TK_CANCELED, "%s: canceled", p->what ? p->what : "snapshot");
}

/* Counts bytes done; CANCELED when the job was asked to stop. */
static tk_code step(progress *p, uint64_t bytes, tk_err *err) {
    uint64_t done = __atomic_add_fetch(&p->done, bytes, __ATOMIC_RELAXED);
    if (p->job) {
        tk_job_set_progress(p->job, done, p->total);
        if (tk_job_canceled(p->job)) return canceled(p, err);
    }
    return TK_OK;
}

/* Size and CRC32C of a whole file, read in chunks that count as progress
 * (and let a canceled job stop in the middle of a big file). */
static tk_code sum_file(const char *path, uint64_t *size, uint32_t *crc, progress *pg,
                        tk_err *err) {
    struct stat st;
    size_t cap = 1u << 20;
    unsigned char *buf;
    uint64_t pos = 0;
    uint32_t c = 0;
    tk_code rc = TK_OK;
    int fd = tk_open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) return tk_fail_errno(err, errno, "open %s", path);
    if (fstat(fd, &st) < 0 || !(buf = tk_malloc(cap))) {
        rc = tk_fail_errno(err, errno ? errno : ENOMEM, "read %s", path);
        close(fd);
        return rc;
    }
    while (rc == TK_OK && pos < (uint64_t)st.st_size) {
        size_t want = (uint64_t)st.st_size - pos < cap ? (size_t)((uint64_t)st.st_size - pos) : cap;
        ssize_t n = tk_pread_full(fd, buf, want, pos);
        if (n < 0 || (size_t)n != want) {
            rc = tk_fail_errno(err, n < 0 ? errno : ENODATA, "read %s", path);
            break;
        }
        c = tk_crc32c(c, buf, want);
        pos += want;
        rc = step(pg, want, err);
    }
    free(buf);
    close(fd);
    *size = pos;
    *crc = c;
    return rc;
}

/* The message for a failed copy: a source that shrank under us was cut by
 * someone else (errno ENODATA from fs.c), not a failing disk. */
static tk_code copy_failed(tk_err *err, int e, const char *src, const char *dst) {
    if (e == ENODATA)
        return tk_fail(err, TK_CONFLICT, "copy %s to %s: the file shrank while it was being "
                       "copied (was the log truncated?)", src, dst);
    return tk_fail_errno(err, e, "copy %s to %s", src, dst);
}

/* ------------------------------------------------------------------ */
/* Create                                                               */
/* ------------------------------------------------------------------ */

typedef struct build {
    tk_manifest man;
    size_t cap;
    int link_tried;             /* a sealed segment was to be linked */
    int linked;                 /* ... and some file was */
    const char *what;           /* for messages: the log's directory (or the import's) */
} build;

static tk_code add_file(build *b, const char *name, uint64_t size, uint32_t crc, tk_err *err) {
    if (b->man.nfiles == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        tk_mfile *f = tk_realloc(b->man.files, cap * sizeof *f);
        if (!f) return tk_fail(err, TK_NOMEM, "snapshot of %s: out of memory", b->what ? b->what : "?");
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

/* Forgets what an attempt placed (the directory is emptied too). */
static void reset_build(build *b) {
    free(b->man.cursors);
    b->man.cursors = NULL;
    b->man.ncursors = 0;
    b->man.nfiles = 0;
    b->man.snap.total_size = 0;
    b->man.snap.num_segments = 0;
    b->linked = b->link_tried = 0;
}

/* The size and CRC the log knows for a sealed segment's index file, when
 * the placed file still has that size; else 0 and the caller reads it. */
static int known_sum(const tk_cut_seg *cs, tk_ext ext, const char *dst, uint64_t *size,
                     uint32_t *crc) {
    struct stat st;
    uint64_t want = ext == TK_EXT_INDEX ? cs->idx_size : cs->tim_size;
    if (!cs->icrc_known || lstat(dst, &st) < 0 || (uint64_t)st.st_size != want) return 0;
    *size = want;
    *crc = ext == TK_EXT_INDEX ? cs->idx_crc : cs->tim_crc;
    return 1;
}

/* One segment's files as placed: its manifest entries (index files may
 * be absent), whether a link was tried and made. */
typedef struct placed {
    tk_mfile f[TK_EXT_COUNT];
    int present[TK_EXT_COUNT];
    int link_tried, linked;
} placed;

static void set_entry(placed *out, int i, const char *name, uint64_t size, uint32_t crc) {
    snprintf(out->f[i].name, sizeof out->f[i].name, "%s", name);
    out->f[i].size = size;
    out->f[i].crc = crc;
    out->present[i] = 1;
}

static tk_code place_sealed(const tk_snapmgr *m, const tk_cut *cut, const tk_cut_seg *cs,
                            const char *tmp, placed *out, progress *pg, tk_err *err) {
    for (int i = 0; i < TK_EXT_COUNT; i++) {
        char src[PATH_MAX], dst[PATH_MAX], name[TK_SEG_NAME_MAX];
        uint64_t size = cs->size;
        uint32_t crc = cs->log_crc;
        int linked;
        tk_seg_name(name, sizeof name, cs->base, (tk_ext)i);
        if (tk_path_join(src, sizeof src, cut->dir, name) < 0 ||
            tk_path_join(dst, sizeof dst, tmp, name) < 0)
            return tk_fail_errno(err, ENAMETOOLONG, "snapshot %s", cut->dir);
        if (tk_place(src, dst, i == TK_EXT_LOG ? size : TK_WHOLE_FILE, m->mode == TK_SNAP_LINK,
                     &linked) < 0) {
            int e = errno;
            if (e == ENOENT && i > 0) continue;        /* derived: rebuilt on restore */
            return e == ENODATA ? copy_failed(err, e, src, dst)
                                : tk_fail_errno(err, e, "place %s at %s", src, dst);
        }
        out->linked |= linked;
        out->link_tried |= m->mode == TK_SNAP_LINK;
        if (i > 0 && !known_sum(cs, (tk_ext)i, dst, &size, &crc) &&
            tk_file_sum(dst, &size, &crc) < 0)
            return tk_fail_errno(err, errno, "read %s", dst);
        set_entry(out, i, name, size, crc);
        if (i == TK_EXT_LOG) {                          /* progress counts .log bytes */
            tk_code rc = step(pg, size, err);
            if (rc != TK_OK) return rc;
        }
    }
    return TK_OK;
}

static tk_code place_active(const tk_cut *cut, const tk_cut_seg *cs, const char *tmp,
                            placed *out, progress *pg, tk_err *err) {
    for (int i = 0; i < TK_EXT_COUNT; i++) {
        char dst[PATH_MAX], name[TK_SEG_NAME_MAX];
        uint32_t crc;
        uint64_t size;
        tk_seg_name(name, sizeof name, cs->base, (tk_ext)i);
        if (tk_path_join(dst, sizeof dst, tmp, name) < 0)
            return tk_fail_errno(err, ENAMETOOLONG, "snapshot %s", cut->dir);
        if (i == TK_EXT_LOG) {
            size = cs->size;
            crc = cs->log_crc;
            if (tk_copy_to_new(cs->log_fd, dst, cs->size) < 0) {
                char src[PATH_MAX];
                tk_path_join(src, sizeof src, cut->dir, name);
                return copy_failed(err, errno, src, dst);
            }
        } else {
            const unsigned char *buf = i == TK_EXT_INDEX ? cs->idx : cs->tim;
            size = i == TK_EXT_INDEX ? cs->idx_len : cs->tim_len;
            if (tk_write_new(dst, buf, (size_t)size) < 0)
                return tk_fail_errno(err, errno, "write %s", dst);
            crc = tk_crc32c(0, buf, (size_t)size);
        }
        set_entry(out, i, name, size, crc);
        if (i == TK_EXT_LOG) {
            tk_code rc = step(pg, size, err);
            if (rc != TK_OK) return rc;
        }
    }
    return TK_OK;
}

typedef struct placing {
    const tk_snapmgr *m;
    const tk_cut *cut;
    const char *tmp;
    size_t *segs;               /* indices into cut->segs, one per task */
    placed *out;
    progress *pg;
} placing;

static tk_code place_task(void *ud, size_t t, tk_err *err) {
    placing *p = ud;
    const tk_cut_seg *cs = &p->cut->segs[p->segs[t]];
    tk_code rc = cs->sealed ? place_sealed(p->m, p->cut, cs, p->tmp, &p->out[t], p->pg, err)
                            : place_active(p->cut, cs, p->tmp, &p->out[t], p->pg, err);
    if (rc == TK_OK && t == 0) TK_FAULT("create.placing");
    return rc;
}

/* Step 3: every segment of the cut, placed in tmp -- several at once in
 * copy mode -- and listed in the manifest in order. */
static tk_code place_cut(const tk_snapmgr *m, const tk_cut *cut, const char *tmp, build *b,
                         progress *pg, unsigned threads, tk_err *err) {
    tk_snapshot *s = &b->man.snap;
    placing p = { m, cut, tmp, NULL, NULL, pg };
    size_t n = 0;
    tk_code rc;
    free(s->segment_offsets);
    s->segment_offsets = tk_calloc(cut->n + 1, sizeof(int64_t));
    p.segs = tk_calloc(cut->n + 1, sizeof *p.segs);
    p.out = tk_calloc(cut->n + 1, sizeof *p.out);
    if (!s->segment_offsets || !p.segs || !p.out) {
        free(p.segs);
        free(p.out);
        return tk_fail(err, TK_NOMEM, "snapshot of %s: out of memory", m->log_dir);
    }
    __atomic_store_n(&pg->done, 0, __ATOMIC_RELAXED);
    pg->total = 0;
    for (size_t i = 0; i < cut->n; i++) {
        const tk_cut_seg *cs = &cut->segs[i];
        pg->total += cs->size;
        if (cs->sealed && cs->next == cs->base) continue;
        s->segment_offsets[s->num_segments++] = cs->base;
        p.segs[n++] = i;
    }
    rc = tk_parallel(n, m->mode == TK_SNAP_COPY ? threads : 1, pg->job != NULL, place_task, &p, report, pg, err);
    for (size_t t = 0; rc == TK_OK && t < n; t++) {
        b->linked |= p.out[t].linked;
        b->link_tried |= p.out[t].link_tried;
        for (int i = 0; rc == TK_OK && i < TK_EXT_COUNT; i++)
            if (p.out[t].present[i])
                rc = add_file(b, p.out[t].f[i].name, p.out[t].f[i].size, p.out[t].f[i].crc, err);
    }
    free(p.segs);
    free(p.out);
    s->base_offset = cut->base_offset;
    s->high_water_mark = cut->high_water_mark;
    return rc;
}

/* Removes what an attempt left in tmp (the directory itself stays: we
 * hold its flock). */
static void empty_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[PATH_MAX];
    if (!d) return;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
            tk_path_join(path, sizeof path, dir, de->d_name) == 0)
            tk_rmtree(path);
    closedir(d);
}

/* Step 3, tried again while the log changes under it.  The first cut was
 * taken by the caller (before a background job started). */
static tk_code place_log(const tk_snapmgr *m, tk_log *log, const char *tmp, build *b,
                         tk_cut *first, progress *pg, unsigned threads, tk_err *err) {
    tk_code rc = TK_OK;
    for (int attempt = 1;; attempt++) {
        tk_cut cut;
        int changed;
        if (attempt == 1) {
            cut = *first;
            memset(first, 0, sizeof *first);
        } else if ((rc = tk_log_cut(log, &cut, err)) != TK_OK) {
            return rc;
        }
        TK_FAULT("create.cut");
        rc = place_cut(m, &cut, tmp, b, pg, threads, err);
        if (rc == TK_OK && cut.ncursors) {         /* the cursors travel with it */
            b->man.cursors = cut.cursors;
            b->man.ncursors = cut.ncursors;
            cut.cursors = NULL;
            cut.ncursors = 0;
        }
        changed = tk_cut_changed(&cut);
        tk_cut_free(&cut);
        if (!changed || rc == TK_CANCELED) return rc;
        if (attempt == CREATE_ATTEMPTS)
            return tk_fail(err, TK_CONFLICT, "snapshot of %s: the log was truncated or restored "
                           "while the snapshot was being built, %d times in a row",
                           m->log_dir, CREATE_ATTEMPTS);
        empty_dir(tmp);
        reset_build(b);
    }
}

static tk_code too_soon(const tk_snapmgr *m, const tk_snapshot *snaps, size_t n,
                        int64_t min_interval, int64_t now, tk_err *err) {
    const tk_snapshot *newest = NULL;
    for (size_t i = 0; i < n && !newest; i++)
        if (!snaps[i].damaged) newest = &snaps[i];
    if (min_interval <= 0 || !newest) return TK_OK;
    int64_t age = now - newest->timestamp;
    /* A newest snapshot dated after now means the clock stepped back:
     * nothing can be measured, so nothing is refused. */
    if (age >= min_interval || age < 0) return TK_OK;
    return tk_fail(err, TK_TOO_SOON, "snapshot of %s: the newest snapshot %s is %" PRId64
                   " ms old, min_interval is %" PRId64 " ms", m->log_dir, newest->id, age,
                   min_interval);
}

/* Step 5 and 6: rename into place and list it.  An import keeps its id
 * (keep_id): a clash is EXISTS instead of a new id. */
static tk_code publish(const tk_snapmgr *m, const tk_create_opts *o, const char *tmp,
                       build *b, int keep_id, tk_err *err) {
    tk_snapshot *snaps, *all;
    size_t n;
    int lock_fd;
    char final[PATH_MAX];
    tk_code rc = locked_catalog(m, &lock_fd, &snaps, &n, err);
    if (rc != TK_OK) return rc;
    if (o) rc = too_soon(m, snaps, n, o->min_interval_ms, b->man.snap.timestamp, err);
    for (int tries = 0; rc == TK_OK; tries++) {
        if (snap_path(final, sizeof final, m, TK_SNAP_PREFIX, b->man.snap.id, NULL) < 0) {
            rc = tk_fail_errno(err, errno, "snapshot %s", m->dir);
            break;
        }
        if (tk_rename_noreplace(tmp, final) == 0) break;
        if (errno == EEXIST && keep_id) {
            rc = tk_fail(err, TK_EXISTS, "import: snapshot %s is already in %s", b->man.snap.id,
                         m->dir);
            break;
        }
        if (errno != EEXIST || tries > 8) {
            rc = tk_fail_errno(err, errno, "rename %s to %s", tmp, final);
            break;
        }
        /* Same id made by another process: pick another suffix.  The
         * manifest names the id, so it is rewritten. */
        char path[PATH_MAX];
        new_id(b->man.snap.id, sizeof b->man.snap.id, b->man.snap.timestamp);
        if (tk_path_join(path, sizeof path, tmp, TK_MANIFEST_FILE) < 0)
            rc = tk_fail_errno(err, ENAMETOOLONG, "snapshot %s", tmp);
        else
            rc = tk_manifest_write(path, &b->man, err);
    }
    if (rc == TK_OK && tk_fsync_dir(m->dir) < 0) rc = tk_fail_errno(err, errno, "fsync %s", m->dir);
    if (rc == TK_OK) TK_FAULT("create.renamed");
    if (rc == TK_OK) {
        if (!(all = tk_calloc(n + 1, sizeof *all)) || tk_snapshot_copy(&all[0], &b->man.snap) < 0) {
            free(all);
            rc = tk_fail(err, TK_NOMEM, "snapshot of %s: out of memory", m->log_dir);
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

/* Steps 1-2: under the metadata lock (a manager opening meanwhile sweeps
 * .tmp-* directories, and must find ours already claimed). */
static tk_code begin_build(const tk_snapmgr *m, const tk_create_opts *o, build *b, char *tmp,
                           size_t cap, int *tmp_fd, tk_err *err) {
    tk_snapshot *snaps;
    size_t n;
    int lock_fd;
    tk_code rc = locked_catalog(m, &lock_fd, &snaps, &n, err);
    if (rc != TK_OK) return rc;
    b->what = m->log_dir;
    b->man.snap.timestamp = now_ms();
    rc = too_soon(m, snaps, n, o->min_interval_ms, b->man.snap.timestamp, err);
    if (rc == TK_OK) rc = next_seq(m, snaps, n, &b->man.snap.seq, err);
    tk_snapshot_list_free(snaps, n);
    new_id(b->man.snap.id, sizeof b->man.snap.id, b->man.snap.timestamp);
    if (rc == TK_OK && snap_path(tmp, cap, m, TK_SNAP_TMP, b->man.snap.id, NULL) < 0)
        rc = tk_fail_errno(err, errno, "snapshot %s", m->dir);
    if (rc == TK_OK && tk_mkdir(tmp, 0755) < 0) rc = tk_fail_errno(err, errno, "create %s", tmp);
    if (rc == TK_OK && (*tmp_fd = claim_dir(tmp, 0)) < 0) {
        rc = tk_fail_errno(err, errno, "lock %s", tmp);
        tk_rmtree(tmp);
    }
    tk_dirlock_release(lock_fd);
    return rc;
}

static tk_code check_create(const tk_snapmgr *m, tk_log *log, const tk_create_opts *o,
                            tk_err *err) {
    int same;
    tk_code rc;
    if (o->label && strlen(o->label) >= TK_SNAP_LABEL_MAX)
        return tk_fail(err, TK_INVALID, "snapshot of %s: label is longer than %d bytes",
                       m->log_dir, TK_SNAP_LABEL_MAX - 1);
    if (o->label && !is_utf8(o->label))
        return tk_fail(err, TK_INVALID, "snapshot of %s: label is not valid UTF-8", m->log_dir);
    if ((rc = tk_log_same_dir(log, m->log_dir, &same, err)) != TK_OK) return rc;
    if (!same)
        return tk_fail(err, TK_INVALID, "snapshot: the log %s is not this manager's log %s",
                       tk_log_dir(log), m->log_dir);
    return TK_OK;
}

/* A create between its first steps (taken by the caller: the metadata
 * lock, the claimed directory, the cut) and the rest (maybe a job's). */
typedef struct creating {
    tk_snapmgr *m;
    tk_log *log;
    tk_create_opts o;
    char *label;                /* o.label's copy */
    build b;
    progress pg;
    char tmp[PATH_MAX];
    int tmp_fd;
    tk_cut cut;
    int pinned;                 /* a job holds the log until create_run is done */
} creating;

static void unpin(creating *c) {
    if (c->pinned) tk_log_unpin(c->log);
    c->pinned = 0;
}

static void free_creating(void *arg) {
    creating *c = arg;
    if (!c) return;
    unpin(c);
    tk_cut_free(&c->cut);
    tk_manifest_free(&c->b.man);
    if (c->tmp_fd >= 0) {               /* never ran: nothing was published */
        tk_rmtree(c->tmp);
        close(c->tmp_fd);
    }
    free(c->label);
    free(c);
}

/* Steps 1-3's start: checks, the claimed directory, the first cut. */
static tk_code create_begin(tk_snapmgr *m, tk_log *log, const tk_create_opts *opts,
                            creating **out, tk_err *err) {
    tk_create_opts defaults;
    creating *c;
    tk_code rc;
    *out = NULL;
    if (!opts) { tk_create_opts_init(&defaults); opts = &defaults; }
    if ((rc = check_create(m, log, opts, err)) != TK_OK) return rc;
    if (!(c = tk_calloc(1, sizeof *c)))
        return tk_fail(err, TK_NOMEM, "snapshot of %s: out of memory", tk_log_dir(log));
    c->m = m;
    c->log = log;
    c->o = *opts;
    c->tmp_fd = -1;
    if (opts->label && !(c->o.label = c->label = tk_strdup(opts->label))) {
        free_creating(c);
        return tk_fail(err, TK_NOMEM, "snapshot of %s: out of memory", tk_log_dir(log));
    }
    c->pg.fn = opts->progress;
    c->pg.ud = opts->progress_ud;
    c->pg.what = "snapshot";
    if (opts->label) snprintf(c->b.man.snap.label, sizeof c->b.man.snap.label, "%s", opts->label);
    if ((rc = begin_build(m, opts, &c->b, c->tmp, sizeof c->tmp, &c->tmp_fd, err)) != TK_OK) {
        c->tmp_fd = -1;
        free_creating(c);
        return rc;
    }
    TK_FAULT("create.tmpdir");
    if ((rc = tk_log_cut(log, &c->cut, err)) != TK_OK) {
        free_creating(c);
        return rc;
    }
    *out = c;
    return TK_OK;
}

/* Steps 3-6: place, write the manifest, sync, publish.  On failure tmp is
 * removed; either way c->tmp_fd is closed. */
static tk_code create_run(creating *c, tk_err *err) {
    char path[PATH_MAX];
    build *b = &c->b;
    tk_code rc = place_log(c->m, c->log, c->tmp, b, &c->cut, &c->pg, c->o.threads, err);
    if (rc == TK_OK) {
        TK_FAULT("create.placed");
        /* Link mode that could not link (another filesystem) is a copy. */
        b->man.snap.mode = c->m->mode == TK_SNAP_COPY || (b->link_tried && !b->linked)
                           ? TK_SNAP_COPY : TK_SNAP_LINK;
        if (tk_path_join(path, sizeof path, c->tmp, TK_MANIFEST_FILE) < 0)
            rc = tk_fail_errno(err, ENAMETOOLONG, "snapshot %s", c->tmp);
        else
            rc = tk_manifest_write(path, &b->man, err);
    }
    if (rc == TK_OK) TK_FAULT("create.manifest");
    if (rc == TK_OK && c->pg.job && tk_job_canceled(c->pg.job)) rc = canceled(&c->pg, err);
    if (rc == TK_OK && tk_sync_tree(c->tmp) < 0) rc = tk_fail_errno(err, errno, "sync %s", c->tmp);
    if (rc == TK_OK && c->pg.job && tk_job_canceled(c->pg.job)) rc = canceled(&c->pg, err);
    if (rc == TK_OK) rc = publish(c->m, &c->o, c->tmp, b, 0, err);
    if (rc != TK_OK) tk_rmtree(c->tmp);
    close(c->tmp_fd);
    c->tmp_fd = -1;
    return rc;
}

tk_code tk_snap_create(tk_snapmgr *m, tk_log *log, const tk_create_opts *opts,
                       tk_snapshot *out, tk_err *err) {
    creating *c;
    tk_code rc = create_begin(m, log, opts, &c, err);
    if (rc != TK_OK) return rc;
    rc = create_run(c, err);
    if (rc == TK_OK && out) {
        *out = c->b.man.snap;
        c->b.man.snap.segment_offsets = NULL;
    }
    free_creating(c);
    return rc;
}

static tk_code create_job(tk_job *job, void *arg, tk_err *err) {
    creating *c = arg;
    char path[PATH_MAX];
    tk_code rc;
    c->pg.job = job;
    rc = create_run(c, err);
    unpin(c);                           /* from here on the log may be closed */
    if (rc != TK_OK) return rc;
    snap_path(path, sizeof path, c->m, TK_SNAP_PREFIX, c->b.man.snap.id, NULL);
    tk_job_set_snapshot(job, &c->b.man.snap, path);
    c->b.man.snap.segment_offsets = NULL;       /* the job's now */
    return TK_OK;
}

tk_code tk_snap_create_async(tk_snapmgr *m, tk_log *log, const tk_create_opts *opts,
                             tk_job **job, tk_err *err) {
    creating *c;
    tk_code rc = create_begin(m, log, opts, &c, err);
    if (rc != TK_OK) return rc;
    c->pg.fn = NULL;                    /* never call back from the job's thread */
    tk_log_pin(log);
    c->pinned = 1;
    return tk_job_start(m->jobs, "create", create_job, c, free_creating, job, err);
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
 * renamed directories are named in *trash for removal after unlocking.
 * A snapshot that cannot be renamed stays listed; the others go on. */
static tk_code unlist(const tk_snapmgr *m, tk_snapshot *snaps, size_t n, const int *doomed,
                      const char *step, char ***trash, size_t *ntrash, size_t *unlisted,
                      tk_err *err) {
    tk_snapshot *keep = tk_calloc(n + 1, sizeof *keep);
    size_t nkeep = 0;
    tk_code rc = TK_OK;
    *trash = tk_calloc(n + 1, sizeof **trash);
    *ntrash = 0;
    if (!keep || !*trash) {
        free(keep);
        free(*trash);
        *trash = NULL;
        return tk_fail(err, TK_NOMEM, "delete in %s: out of memory", m->dir);
    }
    for (size_t i = 0; i < n; i++) {
        char from[PATH_MAX], to[PATH_MAX], *copy;
        if (!doomed[i]) { keep[nkeep++] = snaps[i]; continue; }
        if (snap_path(from, sizeof from, m, TK_SNAP_PREFIX, snaps[i].id, NULL) < 0 ||
            snap_path(to, sizeof to, m, TK_SNAP_DEL, snaps[i].id, NULL) < 0) {
            if (rc == TK_OK) rc = tk_fail_errno(err, errno, "delete %s", snaps[i].id);
            keep[nkeep++] = snaps[i];
            continue;
        }
        if (tk_rename(from, to) < 0 && errno != ENOENT) {
            if (rc == TK_OK) rc = tk_fail_errno(err, errno, "rename %s to %s", from, to);
            keep[nkeep++] = snaps[i];
            continue;
        }
        if (!(copy = tk_strdup(to))) {      /* gone from the catalog all the same */
            tk_rmtree(to);                  /* now, not queued: nothing to queue it with */
            continue;
        }
        (*trash)[(*ntrash)++] = copy;
    }
    if (*ntrash > 0 || nkeep < n) {
        tk_err scratch;
        TK_FAULT(step);
        tk_code prc = publish_catalog(m, keep, nkeep, &scratch);
        if (rc == TK_OK && prc != TK_OK) rc = tk_fail_pass(err, &scratch);
    }
    *unlisted = n - nkeep;
    free(keep);            /* the snapshots themselves still belong to snaps */
    return rc;
}

/* A background job's progress counts snapshots: (removed, unlisted). */
static void empty_trash(char **trash, size_t n, const char *step, tk_job *job) {
    if (job) tk_job_set_progress(job, 0, n);
    for (size_t i = 0; i < n; i++) {
        int fd;
        if (i == 0) TK_FAULT(step);
        fd = claim_dir(trash[i], 1);
        tk_rmtree(trash[i]);
        if (fd >= 0) close(fd);
        free(trash[i]);
        if (job) tk_job_set_progress(job, i + 1, n);
    }
    free(trash);
}

static tk_code delete_marked(tk_snapmgr *m, tk_snapshot *snaps, size_t n, int *doomed,
                             int lock_fd, const char *what, size_t *deleted, tk_job *job,
                             tk_err *err) {
    char **trash = NULL, step[64];
    size_t ntrash = 0, unlisted = 0;
    tk_code rc;
    snprintf(step, sizeof step, "%s.renamed", what);
    rc = unlist(m, snaps, n, doomed, step, &trash, &ntrash, &unlisted, err);
    if (rc != TK_OK) {          /* say how far it got: the others may be gone */
        size_t marked = 0;
        for (size_t i = 0; i < n; i++) marked += doomed[i] != 0;
        tk_fail_prefix(err, rc, "%s in %s: %zu of %zu snapshots deleted", what, m->dir,
                       unlisted, marked);
    }
    if (rc == TK_OK && unlisted > 0) {
        snprintf(step, sizeof step, "%s.published", what);
        TK_FAULT(step);
    }
    tk_dirlock_release(lock_fd);
    if (deleted) *deleted = unlisted;
    snprintf(step, sizeof step, "%s.removing", what);
    if (trash) empty_trash(trash, ntrash, step, job);
    return rc;
}

static tk_code delete_many(tk_snapmgr *m, const char *const *ids, size_t nids,
                           size_t *deleted, tk_job *job, tk_err *err) {
    tk_snapshot *snaps;
    size_t n;
    int lock_fd, *doomed;
    tk_code rc;
    for (size_t i = 0; i < nids; i++)
        if ((rc = tk_snap_check_id(ids[i], err)) != TK_OK) return rc;
    if ((rc = locked_catalog(m, &lock_fd, &snaps, &n, err)) != TK_OK) return rc;
    if (!(doomed = tk_calloc(n + 1, sizeof *doomed))) {
        tk_dirlock_release(lock_fd);
        tk_snapshot_list_free(snaps, n);
        return tk_fail(err, TK_NOMEM, "delete in %s: out of memory", m->dir);
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < nids; j++)
            if (strcmp(snaps[i].id, ids[j]) == 0) doomed[i] = 1;
    rc = delete_marked(m, snaps, n, doomed, lock_fd, nids == 1 ? "delete" : "cleanup",
                       deleted, job, err);
    free(doomed);
    tk_snapshot_list_free(snaps, n);
    return rc;
}

tk_code tk_snap_delete_many(tk_snapmgr *m, const char *const *ids, size_t nids,
                            size_t *deleted, tk_err *err) {
    return delete_many(m, ids, nids, deleted, NULL, err);
}

tk_code tk_snap_delete(tk_snapmgr *m, const char *id, tk_err *err) {
    size_t deleted = 0;
    tk_code rc = tk_snap_delete_many(m, &id, 1, &deleted, err);
    if (rc == TK_OK && deleted == 0) return not_found(m, id, err);
    return rc;
}

static tk_code cleanup(tk_snapmgr *m, size_t max_snapshots, int64_t retention_ms,
                       size_t *deleted, tk_job *job, tk_err *err) {
    tk_snapshot *snaps;
    size_t n, rank = 0;
    int lock_fd, *doomed;
    const tk_snapshot *newest = NULL;
    tk_code rc = locked_catalog(m, &lock_fd, &snaps, &n, err);
    if (rc != TK_OK) return rc;
    if (!(doomed = tk_calloc(n + 1, sizeof *doomed))) {
        tk_dirlock_release(lock_fd);
        tk_snapshot_list_free(snaps, n);
        return tk_fail(err, TK_NOMEM, "cleanup of %s: out of memory", m->dir);
    }
    /* snaps is newest first; the newest healthy one is never a victim, a
     * damaged one always is; ages count from the newest, and a snapshot
     * dated after it (the clock stepped back) has age 0. */
    for (size_t i = 0; i < n; i++) {
        if (snaps[i].damaged) { doomed[i] = 1; continue; }
        if (!newest) { newest = &snaps[i]; rank = 1; continue; }
        if (max_snapshots > 0 && rank >= max_snapshots) doomed[i] = 1;
        if (retention_ms >= 0 && newest->timestamp - snaps[i].timestamp > retention_ms)
            doomed[i] = 1;
        rank++;
    }
    rc = delete_marked(m, snaps, n, doomed, lock_fd, "cleanup", deleted, job, err);
    free(doomed);
    tk_snapshot_list_free(snaps, n);
    return rc;
}

tk_code tk_snap_cleanup(tk_snapmgr *m, size_t max_snapshots, int64_t retention_ms,
                        size_t *deleted, tk_err *err) {
    return cleanup(m, max_snapshots, retention_ms, deleted, NULL, err);
}

/* ------------------------------------------------------------------ */
/* Verify                                                               */
/* ------------------------------------------------------------------ */

static int snapshot_exists(const tk_snapmgr *m, const char *id) {
    char path[PATH_MAX];
    struct stat st;
    return snap_path(path, sizeof path, m, TK_SNAP_PREFIX, id, NULL) == 0 &&
           lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static tk_code read_manifest(const tk_snapmgr *m, const char *id, tk_manifest *man,
                             tk_err *err) {
    char path[PATH_MAX];
    tk_code rc = tk_snap_check_id(id, err);
    if (rc != TK_OK) return rc;
    if (!snapshot_exists(m, id)) return not_found(m, id, err);
    if (snap_path(path, sizeof path, m, TK_SNAP_PREFIX, id, TK_MANIFEST_FILE) < 0)
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
    uint64_t size = 0;
    uint32_t crc = 0;
    tk_code rc;
    if (snap_path(path, sizeof path, m, TK_SNAP_PREFIX, id, f->name) < 0)
        return tk_fail_errno(err, errno, "verify %s", id);
    if ((rc = sum_file(path, &size, &crc, pg, err)) != TK_OK) {
        if (rc == TK_NOT_FOUND && !snapshot_exists(m, id))
            return tk_fail(err, TK_NOT_FOUND, "snapshot %s was deleted while being read", id);
        if (rc == TK_NOT_FOUND)
            return tk_fail(err, TK_CORRUPT, "verify %s: %s is missing", id, path);
        return rc;
    }
    if (size != f->size)
        return tk_fail(err, TK_CORRUPT, "verify %s: %s has %" PRIu64 " bytes, the manifest "
                       "says %" PRIu64, id, path, size, f->size);
    if (crc != f->crc)
        return tk_fail(err, TK_CORRUPT, "verify %s: %s fails its checksum (crc32c %08" PRIx32
                       ", the manifest says %08" PRIx32 ")", id, path, crc, f->crc);
    return TK_OK;
}

typedef struct checking {
    const tk_snapmgr *m;
    const tk_manifest *man;
    const char *dir;            /* restore: where the files go; verify: NULL */
    progress *pg;
} checking;

static tk_code check_task(void *ud, size_t i, tk_err *err) {
    checking *c = ud;
    return check_file(c->m, c->man->snap.id, &c->man->files[i], c->pg, err);
}

static void verify_opts_init(tk_verify_opts *o) { memset(o, 0, sizeof *o); }

/* Every file of the manifest, several at once; the first (in order) that
 * differs is the one named. */
static tk_code verify_files(const tk_snapmgr *m, const tk_manifest *man, progress *pg,
                            unsigned threads, tk_err *err) {
    checking c = { m, man, NULL, pg };
    pg->total = 0;
    for (size_t i = 0; i < man->nfiles; i++) pg->total += man->files[i].size;
    return tk_parallel(man->nfiles, threads, pg->job != NULL, check_task, &c, report, pg, err);
}

tk_code tk_snap_verify(tk_snapmgr *m, const char *id, const tk_verify_opts *o, tk_err *err) {
    tk_verify_opts defaults;
    tk_manifest man;
    progress pg;
    tk_code rc;
    if (!o) { verify_opts_init(&defaults); o = &defaults; }
    memset(&pg, 0, sizeof pg);
    pg.fn = o->progress;
    pg.ud = o->progress_ud;
    pg.what = "verify";
    if ((rc = read_manifest(m, id, &man, err)) != TK_OK) return rc;
    rc = verify_files(m, &man, &pg, o->threads, err);
    tk_manifest_free(&man);
    return rc;
}

typedef struct verifying {
    tk_snapmgr *m;
    char id[TK_SNAP_ID_MAX];
    unsigned threads;
} verifying;

static tk_code verify_job(tk_job *job, void *arg, tk_err *err) {
    verifying *v = arg;
    tk_manifest man;
    progress pg;
    tk_code rc;
    memset(&pg, 0, sizeof pg);
    pg.job = job;
    pg.what = "verify";
    if ((rc = read_manifest(v->m, v->id, &man, err)) != TK_OK) return rc;
    rc = verify_files(v->m, &man, &pg, v->threads, err);
    tk_manifest_free(&man);
    return rc;
}

tk_code tk_snap_verify_async(tk_snapmgr *m, const char *id, const tk_verify_opts *o,
                             tk_job **job, tk_err *err) {
    verifying *v;
    tk_code rc = tk_snap_check_id(id, err);
    if (rc != TK_OK) return rc;
    if (!(v = tk_calloc(1, sizeof *v))) return tk_fail(err, TK_NOMEM, "verify %s: out of memory", id);
    v->m = m;
    snprintf(v->id, sizeof v->id, "%s", id);
    v->threads = o ? o->threads : 0;
    return tk_job_start(m->jobs, "verify", verify_job, v, free, job, err);
}

/* ------------------------------------------------------------------ */
/* Restore                                                              */
/* ------------------------------------------------------------------ */

static tk_code fill_task(void *ud, size_t i, tk_err *err) {
    checking *c = ud;
    const tk_mfile *f = &c->man->files[i];
    const char *id = c->man->snap.id;
    char src[PATH_MAX], dst[PATH_MAX];
    int linked;
    tk_code rc = check_file(c->m, id, f, c->pg, err);
    if (rc == TK_CORRUPT) return tk_fail_prefix(err, TK_CORRUPT, "restore %s refused", id);
    if (rc != TK_OK) return rc;
    if (snap_path(src, sizeof src, c->m, TK_SNAP_PREFIX, id, f->name) < 0 ||
        tk_path_join(dst, sizeof dst, c->dir, f->name) < 0)
        return tk_fail_errno(err, ENAMETOOLONG, "restore %s", id);
    if (tk_place(src, dst, f->size, c->m->mode == TK_SNAP_LINK, &linked) < 0)
        return errno == ENODATA ? copy_failed(err, errno, src, dst)
                                : tk_fail_errno(err, errno, "place %s at %s", src, dst);
    if (i == 0) TK_FAULT("restore.placing");
    return TK_OK;
}

/* Verifies every file of the snapshot, then links or copies it into dir;
 * several files at once. */
static tk_code fill_restore(const tk_snapmgr *m, const tk_manifest *man, const char *dir,
                            progress *pg, unsigned threads, tk_err *err) {
    checking c = { m, man, dir, pg };
    tk_code rc;
    pg->total = 0;
    for (size_t i = 0; i < man->nfiles; i++) pg->total += man->files[i].size;
    rc = tk_parallel(man->nfiles, threads, pg->job != NULL, fill_task, &c, report, pg, err);
    if (rc == TK_OK) TK_FAULT("restore.placed");
    return rc;
}

/* A restored log starts where the snapshot does: .start when that is
 * inside its first segment (docs/FORMAT.md). */
static tk_code write_start(const tk_manifest *man, const char *dir, tk_err *err) {
    char path[PATH_MAX], buf[32];
    int n;
    if (man->snap.num_segments == 0 || man->snap.base_offset <= man->snap.segment_offsets[0])
        return TK_OK;
    n = snprintf(buf, sizeof buf, "%" PRId64 "\n", man->snap.base_offset);
    if (tk_path_join(path, sizeof path, dir, TK_START_FILE) < 0 ||
        tk_replace_file(path, buf, (size_t)n, 0) < 0)
        return tk_fail_errno(err, errno, "write %s/" TK_START_FILE, dir);
    return TK_OK;
}

/* The cursors as they were at the cut, clamped to what the restored log
 * holds ([base, end]: with upto_*, end is below the snapshot's). */
static tk_code write_cursors(const tk_manifest *man, const char *dir, int64_t end, tk_err *err) {
    tk_cursor_info *list;
    tk_code rc;
    if (man->ncursors == 0) return TK_OK;
    if (!(list = tk_calloc(man->ncursors, sizeof *list)))
        return tk_fail(err, TK_NOMEM, "restore %s: out of memory", man->snap.id);
    for (size_t i = 0; i < man->ncursors; i++) {
        list[i] = man->cursors[i];
        if (list[i].offset > end) list[i].offset = end;
        if (list[i].offset < man->snap.base_offset) list[i].offset = man->snap.base_offset;
    }
    rc = tk_cursors_write(dir, list, man->ncursors, err);
    free(list);
    return rc;
}

/* upto_*: open the new directory as a log and cut it.  The log copies
 * any file it shares with the snapshot before changing it. */
static tk_code apply_upto(const tk_manifest *man, const char *dir, const tk_restore_opts *o,
                          int64_t *end, tk_err *err) {
    tk_log *log;
    int64_t cut = -1;
    tk_code rc;
    *end = man->snap.high_water_mark;
    if (o->upto_offset == TK_NONE && o->upto_timestamp == TK_NONE) return TK_OK;
    if ((rc = tk_log_open(dir, NULL, &log, err)) != TK_OK) return rc;
    if (o->upto_offset != TK_NONE) {
        cut = o->upto_offset;
        if (cut < man->snap.base_offset || cut > man->snap.high_water_mark)
            rc = tk_fail(err, TK_OUT_OF_RANGE, "restore %s: upto_offset %" PRId64 " is outside "
                         "[%" PRId64 ", %" PRId64 "]", man->snap.id, cut,
                         man->snap.base_offset, man->snap.high_water_mark);
    }
    if (rc == TK_OK && o->upto_timestamp != TK_NONE) {
        int64_t t;
        rc = o->upto_timestamp == INT64_MAX ? (t = man->snap.high_water_mark, TK_OK)
             : tk_log_offset_for_time(log, o->upto_timestamp + 1, &t, err);
        if (rc == TK_OK && (cut < 0 || t < cut)) cut = t;
    }
    if (rc == TK_OK && cut >= 0) rc = tk_log_truncate(log, cut, err);
    if (rc == TK_OK) rc = tk_log_sync(log, err);
    if (rc == TK_OK) *end = tk_log_high_water_mark(log);
    tk_log_close(log);
    if (rc == TK_OK) {
        /* The state file is the log's, not the snapshot's: a restored
         * directory starts without one. */
        char path[PATH_MAX];
        if (tk_path_join(path, sizeof path, dir, TK_STATE_FILE) == 0) unlink(path);
    }
    TK_FAULT("restore.truncated");
    return rc;
}

static tk_code build_restore(const tk_snapmgr *m, const tk_manifest *man, const char *dir,
                             const tk_restore_opts *o, tk_job *job, tk_err *err) {
    progress pg;
    int64_t end;
    tk_code rc;
    memset(&pg, 0, sizeof pg);
    pg.fn = o->progress;
    pg.ud = o->progress_ud;
    pg.job = job;
    pg.what = "restore";
    rc = fill_restore(m, man, dir, &pg, o->threads, err);
    if (rc == TK_OK) rc = write_start(man, dir, err);
    if (rc == TK_OK) rc = apply_upto(man, dir, o, &end, err);
    if (rc == TK_OK) rc = write_cursors(man, dir, end, err);
    if (rc == TK_OK && tk_sync_tree(dir) < 0) rc = tk_fail_errno(err, errno, "sync %s", dir);
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
    if (S_ISLNK(st.st_mode)) {
        /* Renaming onto it would replace the link, not fill what it points
         * at; following it would write wherever it points.  Neither. */
        char to[PATH_MAX];
        ssize_t n = readlink(target, to, sizeof to - 1);
        to[n > 0 ? n : 0] = '\0';
        return tk_fail(err, TK_EXISTS, "restore to %s: it is a symbolic link (to %s); give the "
                       "directory itself", target, to);
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
                           const tk_restore_opts *o, tk_job *job, tk_err *err) {
    char parent[PATH_MAX], base[PATH_MAX], tmp[PATH_MAX];
    int exists, fd;
    tk_code rc = check_target(target, &exists, err);
    if (rc != TK_OK) return rc;
    split_path(target, parent, sizeof parent, base, sizeof base);
    if (tk_mkdir_p(parent, 0755) < 0) return tk_fail_errno(err, errno, "create %s", parent);
    if (tk_restore_tmp_path(tmp, sizeof tmp, parent, base, man->snap.id, random32()) < 0)
        return tk_fail_errno(err, ENAMETOOLONG, "restore to %s", target);
    if (tk_mkdir(tmp, 0755) < 0) return tk_fail_errno(err, errno, "create %s", tmp);
    if ((fd = claim_dir(tmp, 0)) < 0) {
        rc = tk_fail_errno(err, errno, "lock %s", tmp);
        tk_rmtree(tmp);
        return rc;
    }
    TK_FAULT("restore.tmpdir");
    rc = build_restore(m, man, tmp, o, job, err);
    if (rc == TK_OK && tk_job_canceled(job))
        rc = tk_fail(err, TK_CANCELED, "restore %s to %s: canceled", man->snap.id, target);
    if (rc == TK_OK && tk_rename(tmp, target) < 0)
        rc = (errno == ENOTEMPTY || errno == EEXIST)
             ? tk_fail(err, TK_NOT_EMPTY, "restore to %s: the directory is not empty", target)
             : tk_fail_errno(err, errno, "rename %s to %s", tmp, target);
    if (rc == TK_OK) TK_FAULT("restore.renamed");
    if (rc == TK_OK && tk_fsync_dir(parent) < 0) {
        /* The restore fails, so it leaves no target: a retry must not
         * find NOT_EMPTY (an empty directory that was there comes back). */
        rc = tk_fail_errno(err, errno, "fsync %s", parent);
        tk_rmtree(target);
        if (exists) mkdir(target, 0755);
    }
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
        return tk_fail(err, TK_NOMEM, "restore into %s: out of memory", dir);
    }
    while ((de = readdir(d)) != NULL)
        if (tk_is_log_data_file(de->d_name)) fprintf(mem, "%s\n", de->d_name);
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
                                const char *target, const tk_restore_opts *o, tk_job *job,
                                tk_err *err) {
    char tmp[PATH_MAX], ready[PATH_MAX];
    int lock_fd;
    tk_code rc = tk_dirlock_try(target, TK_LOCK_FILE, &lock_fd, err);
    if (rc != TK_OK) return rc;
    if (tk_restore_pending(target) && (rc = tk_restore_apply(target, err)) != TK_OK) {
        tk_dirlock_release(lock_fd);
        return rc;
    }
    if (snprintf(tmp, sizeof tmp, "%s/" TK_RESTORE_TMP "%08" PRIx32, target, random32()) >= (int)sizeof tmp ||
        tk_path_join(ready, sizeof ready, target, TK_RESTORE_READY) < 0) {
        tk_dirlock_release(lock_fd);
        return tk_fail_errno(err, ENAMETOOLONG, "restore to %s", target);
    }
    tk_rmtree(ready);                   /* an uncommitted leftover cannot be here, but */
    if (tk_mkdir(tmp, 0755) < 0) {
        rc = tk_fail_errno(err, errno, "create %s", tmp);
        tk_dirlock_release(lock_fd);
        return rc;
    }
    TK_FAULT("inplace.tmpdir");
    rc = build_restore(m, man, tmp, o, job, err);
    if (rc == TK_OK) rc = write_list(tmp, err);
    if (rc == TK_OK && tk_job_canceled(job))          /* the last moment to stop */
        rc = tk_fail(err, TK_CANCELED, "restore %s to %s: canceled", man->snap.id, target);
    if (rc == TK_OK) TK_FAULT("inplace.built");
    if (rc == TK_OK && tk_rename(tmp, ready) < 0) rc = tk_fail_errno(err, errno, "rename %s", tmp);
    if (rc == TK_OK && tk_fsync_dir(target) < 0) rc = tk_fail_errno(err, errno, "fsync %s", target);
    if (rc != TK_OK) {
        tk_rmtree(tmp);
        tk_dirlock_release(lock_fd);
        return rc;
    }
    TK_FAULT("inplace.committed");
    rc = tk_restore_apply(target, err);
    if (rc != TK_OK)
        tk_fail_prefix(err, rc, "restore %s to %s is committed and will be completed by the next "
                       "writer to open the log, but did not finish now", man->snap.id, target);
    if (rc == TK_OK) rc = tk_state_invalidate(target, err);
    if (rc == TK_OK) {
        /* Rebuild the published layout now, so that read-only handles kept
         * open see the restored offsets at once (best effort: else the
         * first handle to read rebuilds it). */
        tk_log_opts lo;
        tk_log *lg = NULL;
        tk_err scratch;
        tk_log_opts_init(&lo);
        lo.mode = TK_LOG_READONLY;
        if (tk_log_open(target, &lo, &lg, &scratch) == TK_OK) {
            tk_log_refresh(lg, &scratch);
            tk_log_close(lg);
        }
    }
    tk_dirlock_release(lock_fd);
    return rc;
}

static tk_code restore_run(tk_snapmgr *m, const char *id, const char *target,
                           const tk_restore_opts *opts, tk_job *job, tk_err *err) {
    tk_manifest man;
    struct stat st;
    tk_code rc;
    if (!target || !*target) return tk_fail(err, TK_INVALID, "restore %s: empty target", id ? id : "");
    if ((rc = read_manifest(m, id, &man, err)) != TK_OK) return rc;
    if (opts->replace && lstat(target, &st) == 0 && S_ISDIR(st.st_mode))
        rc = restore_in_place(m, &man, target, opts, job, err);
    else
        rc = restore_new(m, &man, target, opts, job, err);
    tk_manifest_free(&man);
    return rc;
}

tk_code tk_snap_restore(tk_snapmgr *m, const char *id, const char *target,
                        const tk_restore_opts *opts, tk_err *err) {
    tk_restore_opts defaults;
    if (!opts) { tk_restore_opts_init(&defaults); opts = &defaults; }
    return restore_run(m, id, target, opts, NULL, err);
}

typedef struct restoring {
    tk_snapmgr *m;
    char id[TK_SNAP_ID_MAX];
    char *target;
    tk_restore_opts o;
} restoring;

static void free_restoring(void *arg) {
    restoring *r = arg;
    if (r) free(r->target);
    free(r);
}

static tk_code restore_job(tk_job *job, void *arg, tk_err *err) {
    restoring *r = arg;
    return restore_run(r->m, r->id, r->target, &r->o, job, err);
}

tk_code tk_snap_restore_async(tk_snapmgr *m, const char *id, const char *target,
                              const tk_restore_opts *opts, tk_job **job, tk_err *err) {
    restoring *r;
    tk_code rc = tk_snap_check_id(id, err);
    if (rc != TK_OK) return rc;
    if (!target || !*target) return tk_fail(err, TK_INVALID, "restore %s: empty target", id);
    if (!(r = tk_calloc(1, sizeof *r)) || !(r->target = tk_strdup(target))) {
        free_restoring(r);
        return tk_fail(err, TK_NOMEM, "restore %s to %s: out of memory", id, target);
    }
    r->m = m;
    snprintf(r->id, sizeof r->id, "%s", id);
    if (opts) r->o = *opts;
    else tk_restore_opts_init(&r->o);
    r->o.progress = NULL;
    return tk_job_start(m->jobs, "restore", restore_job, r, free_restoring, job, err);
}

typedef struct cleaning {
    tk_snapmgr *m;
    char **ids;                 /* delete_many; NULL: cleanup by the numbers below */
    size_t nids;
    size_t max_snapshots;
    int64_t retention_ms;
} cleaning;

static void free_cleaning(void *arg) {
    cleaning *c = arg;
    if (!c) return;
    for (size_t i = 0; i < c->nids; i++) free(c->ids[i]);
    free(c->ids);
    free(c);
}

static tk_code cleanup_job(tk_job *job, void *arg, tk_err *err) {
    cleaning *c = arg;
    size_t deleted = 0;
    tk_code rc;
    if (tk_job_canceled(job)) return tk_fail(err, TK_CANCELED, "cleanup: canceled");
    rc = c->ids ? delete_many(c->m, (const char *const *)c->ids, c->nids, &deleted, job, err)
                : cleanup(c->m, c->max_snapshots, c->retention_ms, &deleted, job, err);
    tk_job_set_count(job, deleted);
    return rc;
}

static tk_code delete_job(tk_job *job, void *arg, tk_err *err) {
    cleaning *c = arg;
    size_t deleted = 0;
    tk_code rc;
    if (tk_job_canceled(job)) return tk_fail(err, TK_CANCELED, "delete %s: canceled", c->ids[0]);
    rc = delete_many(c->m, (const char *const *)c->ids, 1, &deleted, job, err);
    if (rc == TK_OK && deleted == 0) return not_found(c->m, c->ids[0], err);
    return rc;
}

tk_code tk_snap_delete_async(tk_snapmgr *m, const char *id, tk_job **job, tk_err *err) {
    cleaning *c;
    tk_code rc = tk_snap_check_id(id, err);
    *job = NULL;
    if (rc != TK_OK) return rc;
    if (!(c = tk_calloc(1, sizeof *c)) || !(c->ids = tk_calloc(1, sizeof *c->ids)) ||
        !(c->ids[0] = tk_strdup(id))) {
        free_cleaning(c);
        return tk_fail(err, TK_NOMEM, "delete %s: out of memory", id);
    }
    c->m = m;
    c->nids = 1;
    return tk_job_start(m->jobs, "delete", delete_job, c, free_cleaning, job, err);
}

tk_code tk_snap_cleanup_async(tk_snapmgr *m, size_t max_snapshots, int64_t retention_ms,
                              tk_job **job, tk_err *err) {
    cleaning *c = tk_calloc(1, sizeof *c);
    if (!c) return tk_fail(err, TK_NOMEM, "cleanup of %s: out of memory", m->dir);
    c->m = m;
    c->max_snapshots = max_snapshots;
    c->retention_ms = retention_ms;
    return tk_job_start(m->jobs, "cleanup", cleanup_job, c, free_cleaning, job, err);
}

tk_code tk_snap_delete_many_async(tk_snapmgr *m, const char *const *ids, size_t n,
                                  tk_job **job, tk_err *err) {
    cleaning *c = tk_calloc(1, sizeof *c);
    tk_code rc;
    for (size_t i = 0; i < n; i++)
        if ((rc = tk_snap_check_id(ids[i], err)) != TK_OK) { free(c); return rc; }
    if (!c || !(c->ids = tk_calloc(n + 1, sizeof *c->ids))) {
        free(c);
        return tk_fail(err, TK_NOMEM, "cleanup of %s: out of memory", m->dir);
    }
    c->m = m;
    for (; c->nids < n; c->nids++)
        if (!(c->ids[c->nids] = tk_strdup(ids[c->nids]))) {
            free_cleaning(c);
            return tk_fail(err, TK_NOMEM, "cleanup of %s: out of memory", m->dir);
        }
    return tk_job_start(m->jobs, "cleanup", cleanup_job, c, free_cleaning, job, err);
}

/* ------------------------------------------------------------------ */
/* For importers (snapdir.h)                                            */
/* ------------------------------------------------------------------ */

tk_code tk_snap_read_manifest(tk_snapmgr *m, const char *id, tk_manifest *man, tk_err *err) {
    return read_manifest(m, id, man, err);
}

tk_code tk_snap_file_path(const tk_snapmgr *m, const char *id, const char *file, char *out,
                          size_t cap, tk_err *err) {
    tk_code rc = tk_snap_check_id(id, err);
    if (rc != TK_OK) return rc;
    if (snap_path(out, cap, m, TK_SNAP_PREFIX, id, file) < 0)
        return tk_fail_errno(err, errno, "snapshot %s", id);
    return TK_OK;
}

tk_code tk_snap_import_begin(tk_snapmgr *m, const char *id, char *tmp, size_t cap,
                             int *tmp_fd, tk_err *err) {
    int lock_fd;
    tk_code rc = tk_snap_check_id(id, err);
    if (rc != TK_OK) return rc;
    if ((rc = meta_lock(m, &lock_fd, err)) != TK_OK) return rc;
    if (snapshot_exists(m, id))
        rc = tk_fail(err, TK_EXISTS, "import: snapshot %s is already in %s", id, m->dir);
    else if (snap_path(tmp, cap, m, TK_SNAP_TMP, id, NULL) < 0)
        rc = tk_fail_errno(err, errno, "import %s", id);
    else if (tk_mkdir(tmp, 0755) < 0)
        rc = errno == EEXIST ? tk_fail(err, TK_EXISTS, "import: snapshot %s is being imported "
                                       "into %s already", id, m->dir)
                             : tk_fail_errno(err, errno, "create %s", tmp);
    else if ((*tmp_fd = claim_dir(tmp, 0)) < 0) {
        rc = tk_fail_errno(err, errno, "lock %s", tmp);
        tk_rmtree(tmp);
    }
    tk_dirlock_release(lock_fd);
    return rc;
}

tk_code tk_snap_import_publish(tk_snapmgr *m, const char *tmp, tk_manifest *man, tk_err *err) {
    char path[PATH_MAX];
    tk_snapshot *snaps;
    size_t n;
    int lock_fd;
    build b;
    tk_code rc;
    /* The creation number is this directory's: an import is created here. */
    if ((rc = locked_catalog(m, &lock_fd, &snaps, &n, err)) != TK_OK) return rc;
    rc = next_seq(m, snaps, n, &man->snap.seq, err);
    tk_snapshot_list_free(snaps, n);
    tk_dirlock_release(lock_fd);
    if (rc != TK_OK) return rc;
    if (tk_path_join(path, sizeof path, tmp, TK_MANIFEST_FILE) < 0)
        return tk_fail_errno(err, ENAMETOOLONG, "import %s", tmp);
    if ((rc = tk_manifest_write(path, man, err)) != TK_OK) return rc;
    if (tk_sync_tree(tmp) < 0) return tk_fail_errno(err, errno, "sync %s", tmp);
    memset(&b, 0, sizeof b);
    b.man = *man;                       /* borrowed: publish only reads it */
    b.what = tmp;
    return publish(m, NULL, tmp, &b, 1, err);
}

tk_jobs *tk_snap_jobs(tk_snapmgr *m) { return m->jobs; }

void tk_snap_import_abort(const char *tmp, int tmp_fd) {
    tk_rmtree(tmp);
    if (tmp_fd >= 0) close(tmp_fd);
}

#ifdef TK_FAULT_INJECTION
/* TAKHIN_FAULT=step kills at the first time step is reached; step@N at
 * the Nth (counted in this process). */
void tk_fault_point(const char *name) {
    static unsigned long seen;
    const char *want = getenv("TAKHIN_FAULT"), *at;
    size_t len;
    if (!want) return;
    at = strchr(want, '@');
    len = at ? (size_t)(at - want) : strlen(want);
    if (strlen(name) != len || strncmp(want, name, len) != 0) return;
    if (!at || __atomic_add_fetch(&seen, 1, __ATOMIC_SEQ_CST) >= strtoul(at + 1, NULL, 10))
        raise(SIGKILL);
}
#endif
