/*
 * transfer.c -- snapshots as streams: export and import (SPEC §10).
 *
 * The archive (docs/FORMAT.md, "The archive"), written and read by
 * archive.c:
 *
 *     manifest.json               the snapshot's manifest, byte for byte
 *     since.json                  incremental archives only:
 *                                 {"format": 1, "since": "<base id>"}
 *     00000000000000000000.log    the snapshot's files in manifest order:
 *     ...                         all of them, or those the base lacks
 *     two zero blocks             the end; the writer adds no padding
 *
 * Export reads each file once and checks it against the manifest's size
 * and CRC32C on the way: a damaged file stops the export (CORRUPT) before
 * the archive is finished, so no complete archive ever carries one.  To a
 * path it writes <path>.tmp, fsyncs it and renames it over the path.
 *
 * Import.  Crash state after each step in brackets.
 *   1. Read manifest.json (the first entry, at most MANIFEST_MAX bytes)
 *      into memory; its id names the snapshot.
 *   2. tk_snap_import_begin: .tmp-<id> made and claimed (EXISTS when
 *      snapshot <id> is there already).                          [leftover]
 *   3. manifest.json written there, read back with manifest.c's checks,
 *      then checked against itself (check_manifest).              [leftover]
 *   4. since.json, if next: the base must be in this manager
 *      (NOT_FOUND, naming it) before any data is read.
 *   5. Each file streamed into .tmp-<id> (created O_EXCL|O_NOFOLLOW,
 *      its name a segment file name of the manifest), its size and
 *      CRC32C checked against the manifest.                        [leftover]
 *   6. The end of the archive, then the rest of the stream: tar padding
 *      only, the zstd frame complete.  Files the archive does not carry
 *      come from the base (linked, or copied), checked against both
 *      manifests and re-read for their CRC32C.                     [leftover]
 *   7. tk_snap_import_publish: this directory's next creation number, the
 *      manifest rewritten, fsynced, renamed to snapshot-<id>, listed.
 *                                                                  [complete]
 * Any failure: tk_snap_import_abort removes .tmp-<id>.  A crash leaves it
 * unclaimed, and the next manager that opens removes it (snapshot.c).
 * Nothing is written anywhere else: every name created is a segment file
 * name (names.c) inside the claimed directory.
 *
 * Neither direction touches Lua or global state: both can run on a thread
 * of their own, asking opts->cancel between files and between blocks of at
 * most 1 MiB (archive.c's buffer).
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "archive.h"
#include "error.h"
#include "fs.h"
#include "job.h"
#include "manifest.h"
#include "names.h"
#include "record.h"
#include "snapdir.h"
#include "sys.h"
#include "internal.h"

#define ARCHIVE_FORMAT 1
#define MANIFEST_MAX (16u << 20)            /* bytes of manifest.json an import reads */
#define SINCE_MAX (64u << 10)
#define FILE_MAX (UINT64_C(4) << 30)        /* a segment file: <= 1 GiB of segment + a record */
#define WHAT_MAX (PATH_MAX + 160)

void tk_export_opts_init(tk_export_opts *o) { memset(o, 0, sizeof *o); }
void tk_import_opts_init(tk_import_opts *o) { memset(o, 0, sizeof *o); }

/* ------------------------------------------------------------------ */
/* Shared                                                               */
/* ------------------------------------------------------------------ */

/* Progress and cancellation: what a thread running the job is told and
 * asked. */
typedef struct job {
    tk_progress_fn progress;
    void *progress_ud;
    tk_cancel_fn cancel;
    void *cancel_ud;
    uint64_t done, total;
} job;

static void advance(job *j, uint64_t n) {
    j->done += n;
    if (j->progress) j->progress(j->progress_ud, j->done, j->total);
}

static int canceled(const job *j) {
    return j->cancel && j->cancel(j->cancel_ud);
}

static tk_code cancel_failure(const char *what, tk_err *err) {
    return tk_fail(err, TK_CANCELED, "%s: canceled", what);
}

static int cmp_mfile(const void *a, const void *b) {
    return strcmp((*(const tk_mfile *const *)a)->name, (*(const tk_mfile *const *)b)->name);
}

/* Pointers to man's files, sorted by name, for lookups; NULL when out of
 * memory. */
static const tk_mfile **sort_files(const tk_manifest *man) {
    const tk_mfile **s = tk_malloc((man->nfiles + 1) * sizeof *s);
    if (!s) return NULL;
    for (size_t i = 0; i < man->nfiles; i++) s[i] = &man->files[i];
    qsort(s, man->nfiles, sizeof *s, cmp_mfile);
    return s;
}

static const tk_mfile *find_file(const tk_mfile **sorted, size_t n, const char *name) {
    tk_mfile key;
    const tk_mfile *k = &key, **hit;
    if (strlen(name) >= sizeof key.name) return NULL;       /* no file has such a name */
    snprintf(key.name, sizeof key.name, "%s", name);
    hit = bsearch(&k, sorted, n, sizeof *sorted, cmp_mfile);
    return hit ? *hit : NULL;
}

static int64_t mtime_of(const tk_manifest *man) {
    return man->snap.timestamp > 0 ? man->snap.timestamp / 1000 : 0;
}

/* ------------------------------------------------------------------ */
/* Export                                                               */
/* ------------------------------------------------------------------ */

typedef struct exporter {
    tk_snapmgr *m;
    const char *id;
    char what[WHAT_MAX];
    tk_manifest man, base;
    int have_base;
    unsigned char *send;        /* per file of man: goes in the archive */
    char since_json[160];
    size_t since_len;
    tk_arc_writer *w;
    job j;
} exporter;

static tk_code check_export_opts(const char *id, const tk_export_opts *o, int *level,
                                 tk_err *err) {
    if (o->compress != TK_COMPRESS_NONE && o->compress != TK_COMPRESS_ZSTD)
        return tk_fail(err, TK_INVALID, "export %s: unknown compression %d", id, (int)o->compress);
    if (o->compress == TK_COMPRESS_NONE && o->level != 0)
        return tk_fail(err, TK_INVALID, "export %s: a level needs zstd compression", id);
    *level = o->compress == TK_COMPRESS_NONE ? 0 : o->level ? o->level : TK_ARC_LEVEL_DEFAULT;
    if (*level && (*level < TK_ARC_LEVEL_MIN || *level > TK_ARC_LEVEL_MAX))
        return tk_fail(err, TK_INVALID, "export %s: zstd level %d is outside %d..%d", id, *level,
                       TK_ARC_LEVEL_MIN, TK_ARC_LEVEL_MAX);
    if (o->since && strcmp(o->since, id) == 0)
        return tk_fail(err, TK_INVALID, "export %s: an archive since itself would be empty", id);
    return TK_OK;
}

/* Which files go in: all, or those the base does not hold. */
static tk_code plan(exporter *x, tk_err *err) {
    const tk_mfile **sorted = NULL;
    if (!(x->send = tk_calloc(x->man.nfiles + 1, 1)) ||
        (x->have_base && !(sorted = sort_files(&x->base))))
        return tk_fail(err, TK_NOMEM, "%s: out of memory", x->what);
    for (size_t i = 0; i < x->man.nfiles; i++) {
        const tk_mfile *f = &x->man.files[i], *b;
        b = sorted ? find_file(sorted, x->base.nfiles, f->name) : NULL;
        x->send[i] = !(b && b->size == f->size && b->crc == f->crc);
        if (x->send[i]) x->j.total += f->size;
    }
    free(sorted);
    return TK_OK;
}

/* Streams size bytes of the file at path into the current entry.  want:
 * the CRC32C the manifest gives, checked at the end (NULL: none). */
static tk_code stream_file(exporter *x, int fd, const char *path, uint64_t size,
                           const uint32_t *want, tk_err *err) {
    uint64_t left = size;
    uint32_t crc = 0;
    while (left > 0) {
        void *p;
        size_t n;
        ssize_t got;
        tk_code rc;
        if (canceled(&x->j)) return cancel_failure(x->what, err);
        if ((rc = tk_arc_space(x->w, &p, &n, err)) != TK_OK) return rc;
        do got = read(fd, p, n);
        while (got < 0 && errno == EINTR);
        if (got < 0) return tk_fail_errno(err, errno, "%s: read %s", x->what, path);
        if (got == 0)
            return tk_fail(err, TK_CORRUPT, "%s: %s ended after %" PRIu64 " of its %" PRIu64
                           " bytes", x->what, path, size - left, size);
        crc = tk_crc32c(crc, p, (size_t)got);
        tk_arc_commit(x->w, (size_t)got);
        left -= (uint64_t)got;
        if (want) advance(&x->j, (uint64_t)got);
    }
    if (want && crc != *want)
        return tk_fail(err, TK_CORRUPT, "%s: %s fails its checksum (crc32c %08" PRIx32 ", the "
                       "manifest says %08" PRIx32 "); nothing exported", x->what, path, crc, *want);
    return tk_arc_end_entry(x->w, err);
}

/* One file of the snapshot, as an entry: its size must be the manifest's. */
static tk_code send_file(exporter *x, const char *name, const uint64_t *size,
                         const uint32_t *crc, tk_err *err) {
    char path[PATH_MAX];
    struct stat st;
    int fd;
    tk_code rc = tk_snap_file_path(x->m, x->id, name, path, sizeof path, err);
    if (rc != TK_OK) return rc;
    if ((fd = tk_open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0)) < 0)
        return errno == ENOENT
               ? tk_fail(err, TK_CORRUPT, "%s: %s is missing", x->what, path)
               : tk_fail_errno(err, errno, "%s: open %s", x->what, path);
    if (fstat(fd, &st) < 0) rc = tk_fail_errno(err, errno, "%s: stat %s", x->what, path);
    else if (!S_ISREG(st.st_mode))
        rc = tk_fail(err, TK_CORRUPT, "%s: %s is not a regular file", x->what, path);
    else if (size && (uint64_t)st.st_size != *size)
        rc = tk_fail(err, TK_CORRUPT, "%s: %s has %" PRIu64 " bytes, the manifest says %" PRIu64,
                     x->what, path, (uint64_t)st.st_size, *size);
    else if (!size && (uint64_t)st.st_size > MANIFEST_MAX)
        rc = tk_fail(err, TK_INVALID, "%s: %s has %" PRIu64 " bytes, more than an import "
                     "reads (%u)", x->what, path, (uint64_t)st.st_size, MANIFEST_MAX);
    if (rc == TK_OK) rc = tk_arc_add(x->w, name, (uint64_t)st.st_size, mtime_of(&x->man), err);
    if (rc == TK_OK) rc = stream_file(x, fd, path, (uint64_t)st.st_size, crc, err);
    close(fd);
    return rc;
}

static tk_code manifest_size(exporter *x, uint64_t *size, tk_err *err) {
    char path[PATH_MAX];
    struct stat st;
    tk_code rc = tk_snap_file_path(x->m, x->id, TK_MANIFEST_FILE, path, sizeof path, err);
    if (rc != TK_OK) return rc;
    if (lstat(path, &st) < 0) return tk_fail_errno(err, errno, "%s: stat %s", x->what, path);
    *size = (uint64_t)st.st_size;
    return TK_OK;
}

/* The tar bytes of the whole archive, for the zstd frame header.  The
 * manifest's size is taken again when it is sent; should it differ, zstd
 * refuses to finish the frame. */
static tk_code archive_size(exporter *x, uint64_t *size, tk_err *err) {
    uint64_t msize = 0;
    tk_code rc = manifest_size(x, &msize, err);
    if (rc != TK_OK) return rc;
    *size = tk_arc_entry_bytes(msize) + TK_ARC_END_BYTES;
    if (x->have_base) *size += tk_arc_entry_bytes(x->since_len);
    for (size_t i = 0; i < x->man.nfiles; i++)
        if (x->send[i]) *size += tk_arc_entry_bytes(x->man.files[i].size);
    return TK_OK;
}

static tk_code write_archive(exporter *x, tk_err *err) {
    tk_code rc = send_file(x, TK_MANIFEST_FILE, NULL, NULL, err);
    if (rc == TK_OK && x->have_base) {
        rc = tk_arc_add(x->w, TK_ARC_SINCE_FILE, x->since_len, mtime_of(&x->man), err);
        if (rc == TK_OK) rc = tk_arc_write(x->w, x->since_json, x->since_len, err);
        if (rc == TK_OK) rc = tk_arc_end_entry(x->w, err);
    }
    for (size_t i = 0; rc == TK_OK && i < x->man.nfiles; i++)
        if (x->send[i])
            rc = send_file(x, x->man.files[i].name, &x->man.files[i].size, &x->man.files[i].crc,
                           err);
    if (rc == TK_OK) rc = tk_arc_finish(x->w, err);
    return rc;
}

/* A reader that went away (a closed pipe) must fail the export with
 * EPIPE, not kill the process with SIGPIPE: the signal is blocked on this
 * thread while it writes, and one it raised is consumed before the mask
 * is restored (the way libraries that write to sockets they do not own
 * do it).  A SIGPIPE pending from before is left alone. */
typedef struct pipe_guard {
    sigset_t set, old;
    int was_pending;
} pipe_guard;

static void block_sigpipe(pipe_guard *g) {
    sigset_t pending;
    sigemptyset(&g->set);
    sigaddset(&g->set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &g->set, &g->old);
    g->was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE);
}

static void restore_sigpipe(pipe_guard *g) {
    sigset_t pending;
    if (!g->was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = { 0, 0 };
        while (sigtimedwait(&g->set, NULL, &zero) < 0 && errno == EINTR) {}
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* writeback: fd is a new regular file that will be fsynced. */
static tk_code export_fd(tk_snapmgr *m, const char *id, int fd, const tk_export_opts *opts,
                         int writeback, tk_err *err) {
    tk_export_opts defaults;
    exporter x;
    uint64_t size = 0;
    int level = 0;
    tk_code rc;
    if (!opts) { tk_export_opts_init(&defaults); opts = &defaults; }
    if (!id) return tk_fail(err, TK_INVALID, "export: no snapshot id");
    if ((rc = check_export_opts(id, opts, &level, err)) != TK_OK) return rc;
    memset(&x, 0, sizeof x);
    x.m = m;
    x.id = id;
    x.j.progress = opts->progress;
    x.j.progress_ud = opts->progress_ud;
    x.j.cancel = opts->cancel;
    x.j.cancel_ud = opts->cancel_ud;
    snprintf(x.what, sizeof x.what, "export %s%s%s", id, opts->name ? " to " : "",
             opts->name ? opts->name : "");
    if ((rc = tk_snap_read_manifest(m, id, &x.man, err)) != TK_OK) return rc;
    if (opts->since) {
        rc = tk_snap_read_manifest(m, opts->since, &x.base, err);
        if (rc != TK_OK) {
            tk_manifest_free(&x.man);
            return tk_fail_prefix(err, rc, "export %s since %s", id, opts->since);
        }
        x.have_base = 1;
        x.since_len = (size_t)snprintf(x.since_json, sizeof x.since_json,
                                       "{\n  \"format\": %d,\n  \"since\": \"%s\"\n}\n",
                                       ARCHIVE_FORMAT, opts->since);
    }
    rc = plan(&x, err);
    if (rc == TK_OK) rc = archive_size(&x, &size, err);
    if (rc == TK_OK) rc = tk_arc_writer_open(fd, level, size, x.what, &x.w, err);
    if (rc == TK_OK && writeback) tk_arc_start_writeback(x.w);
    if (rc == TK_OK) {
        pipe_guard g;
        block_sigpipe(&g);
        rc = write_archive(&x, err);
        restore_sigpipe(&g);
    }
    if (opts->written) *opts->written = x.w ? tk_arc_written(x.w) : 0;
    tk_arc_writer_free(x.w);
    free(x.send);
    tk_manifest_free(&x.man);
    tk_manifest_free(&x.base);
    return rc;
}

tk_code tk_snap_export(tk_snapmgr *m, const char *id, int fd, const tk_export_opts *opts,
                       tk_err *err) {
    return export_fd(m, id, fd, opts, 0, err);
}

static void parent_dir(const char *path, char *out, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(out, cap, ".");
    else if (slash == path) snprintf(out, cap, "/");
    else snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

/* Not a regular file (a device, a FIFO): written to as it is. */
static tk_code export_special(tk_snapmgr *m, const char *id, const char *path,
                              const tk_export_opts *o, tk_err *err) {
    int fd = tk_open(path, O_WRONLY | O_CLOEXEC, 0);
    tk_code rc;
    if (fd < 0) return tk_fail_errno(err, errno, "export %s: open %s", id, path);
    rc = tk_snap_export(m, id, fd, o, err);
    if (close(fd) < 0 && rc == TK_OK) rc = tk_fail_errno(err, errno, "export %s: close %s", id, path);
    return rc;
}

tk_code tk_snap_export_file(tk_snapmgr *m, const char *id, const char *path,
                            const tk_export_opts *opts, tk_err *err) {
    tk_export_opts o;
    char tmp[PATH_MAX], dir[PATH_MAX];
    struct stat st;
    int fd;
    tk_code rc;
    if (!id) return tk_fail(err, TK_INVALID, "export: no snapshot id");
    if (!path || !*path) return tk_fail(err, TK_INVALID, "export %s: empty path", id);
    if (opts) o = *opts;
    else tk_export_opts_init(&o);
    if (!o.name) o.name = path;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return tk_fail(err, TK_INVALID, "export %s to %s: it is a directory", id, path);
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) return export_special(m, id, path, &o, err);
    if (snprintf(tmp, sizeof tmp, "%s" TK_TMP_SUFFIX, path) >= (int)sizeof tmp)
        return tk_fail_errno(err, ENAMETOOLONG, "export %s to %s", id, path);
    unlink(tmp);                                /* a crash's leftover */
    if ((fd = tk_open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0)
        return tk_fail_errno(err, errno, "export %s: create %s", id, tmp);
    rc = export_fd(m, id, fd, &o, 1, err);
    if (rc == TK_OK && tk_fsync(fd) < 0) rc = tk_fail_errno(err, errno, "export %s: fsync %s", id, tmp);
    if (close(fd) < 0 && rc == TK_OK) rc = tk_fail_errno(err, errno, "export %s: close %s", id, tmp);
    if (rc == TK_OK && tk_rename(tmp, path) < 0)
        rc = tk_fail_errno(err, errno, "export %s: rename %s to %s", id, tmp, path);
    parent_dir(path, dir, sizeof dir);
    if (rc == TK_OK && tk_fsync_dir(dir) < 0)
        rc = tk_fail_errno(err, errno, "export %s: fsync %s", id, dir);
    if (rc != TK_OK) unlink(tmp);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Import: the manifest                                                 */
/* ------------------------------------------------------------------ */

typedef struct importer {
    tk_snapmgr *m;
    char what[WHAT_MAX];        /* "import from <name>", then "import <id> from <name>" */
    tk_arc_reader *r;
    tk_manifest man;
    const tk_mfile **sorted;    /* man's files by name */
    unsigned char *got;         /* per file of man: in place */
    char since[TK_SNAP_ID_MAX];
    tk_manifest base;
    int have_base;
    unsigned files;             /* file entries read */
    char tmp[PATH_MAX];
    int tmp_fd;                 /* >= 0 once .tmp-<id> is claimed */
    job j;
} importer;

/* The whole data of the current entry (at most max bytes) into a new
 * NUL-terminated buffer. */
static tk_code read_small(importer *im, const tk_arc_entry *e, size_t max, char **out,
                          tk_err *err) {
    size_t len = 0;
    char *buf;
    *out = NULL;
    if (e->size > max)
        return tk_fail(err, TK_INVALID, "%s: %s has %" PRIu64 " bytes; refused above %zu",
                       im->what, e->name, e->size, max);
    if (!(buf = tk_malloc((size_t)e->size + 1))) return tk_fail(err, TK_NOMEM, "%s: out of memory", im->what);
    for (;;) {
        const void *p;
        size_t n;
        tk_code rc = tk_arc_data(im->r, &p, &n, err);
        if (rc != TK_OK) { free(buf); return rc; }
        if (n == 0) break;
        memcpy(buf + len, p, n);
        len += n;
    }
    buf[len] = '\0';
    *out = buf;
    return TK_OK;
}

/* A string field of a JSON object that is a valid snapshot id, into out
 * (TK_SNAP_ID_MAX bytes); -1 when there is none. */
static int id_field(json_t *root, const char *key, char *out) {
    json_t *v = json_object_get(root, key);
    if (!json_is_string(v) || json_string_length(v) >= TK_SNAP_ID_MAX ||
        strlen(json_string_value(v)) != json_string_length(v) ||
        tk_snap_check_id(json_string_value(v), NULL) != TK_OK)
        return -1;
    snprintf(out, TK_SNAP_ID_MAX, "%s", json_string_value(v));
    return 0;
}

static int get_id(void *root, void *id) { return id_field(root, "id", id); }

/* The snapshot id manifest.json names, before anything is written. */
static tk_code manifest_id(importer *im, const char *text, size_t len, char *id, tk_err *err) {
    char why[200] = "";
    int r = tk_json_parse(text, len, get_id, id, why, sizeof why);
    if (r == -2) return tk_fail(err, TK_NOMEM, "%s: out of memory", im->what);
    if (r == -1 && why[0])
        return tk_fail(err, TK_CORRUPT, "%s: the archive's manifest.json does not parse: %s",
                       im->what, why);
    if (r < 0)
        return tk_fail(err, TK_CORRUPT, "%s: the archive's manifest.json has no valid snapshot id",
                       im->what);
    return TK_OK;
}

static tk_code bad_manifest(importer *im, tk_err *err, const char *fmt, ...) TK_PRINTF(3, 4);
static tk_code bad_manifest(importer *im, tk_err *err, const char *fmt, ...) {
    char why[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return tk_fail(err, TK_CORRUPT, "%s: the manifest does not hold together: %s", im->what, why);
}

/* Segment offsets, files and sizes agree with each other (manifest.c has
 * checked each field on its own: types, ranges, names). */
static tk_code check_segments(importer *im, tk_err *err) {
    const tk_snapshot *s = &im->man.snap;
    const int64_t *offs = s->segment_offsets;
    size_t n = s->num_segments;
    if (n == 0) return bad_manifest(im, err, "it lists no segment");
    for (size_t i = 1; i < n; i++)
        if (offs[i] <= offs[i - 1])
            return bad_manifest(im, err, "segment offsets %" PRId64 " and %" PRId64 " are out of "
                                "order", offs[i - 1], offs[i]);
    if (s->base_offset < offs[0])
        return bad_manifest(im, err, "base offset %" PRId64 " is below its first segment %" PRId64,
                            s->base_offset, offs[0]);
    if (offs[n - 1] > s->high_water_mark)
        return bad_manifest(im, err, "segment %" PRId64 " starts above the high water mark %"
                            PRId64, offs[n - 1], s->high_water_mark);
    for (size_t i = 0; i < n; i++) {
        char name[TK_SEG_NAME_MAX];
        const tk_mfile *log;
        int64_t next = i + 1 < n ? offs[i + 1] : s->high_water_mark;
        uint64_t records = (uint64_t)(next - offs[i]);
        if (tk_seg_name(name, sizeof name, offs[i], TK_EXT_LOG) < 0 ||
            !(log = find_file(im->sorted, im->man.nfiles, name)))
            return bad_manifest(im, err, "segment %" PRId64 " has no .log file", offs[i]);
        if (records > log->size / TK_REC_HEADER)
            return bad_manifest(im, err, "segment %" PRId64 " would hold %" PRIu64 " records in "
                                "%" PRIu64 " bytes (each takes at least %u)", offs[i], records,
                                log->size, TK_REC_HEADER);
    }
    return TK_OK;
}

static int has_segment(const tk_snapshot *s, int64_t base) {
    size_t lo = 0, hi = s->num_segments;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->segment_offsets[mid] == base) return 1;
        if (s->segment_offsets[mid] < base) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

static tk_code check_files(importer *im, tk_err *err) {
    const tk_manifest *man = &im->man;
    uint64_t total = 0;
    for (size_t i = 0; i < man->nfiles; i++) {
        const tk_mfile *f = im->sorted[i];
        int64_t base;
        if (i > 0 && strcmp(f->name, im->sorted[i - 1]->name) == 0)
            return bad_manifest(im, err, "it lists %s twice", f->name);
        if (f->size > FILE_MAX)
            return tk_fail(err, TK_INVALID, "%s: the manifest gives %s %" PRIu64 " bytes; "
                           "refused above %" PRIu64, im->what, f->name, f->size, FILE_MAX);
        if (!tk_parse_seg_name(f->name, &base, NULL) || !has_segment(&man->snap, base))
            return bad_manifest(im, err, "%s belongs to none of its segments", f->name);
        total += f->size;
    }
    if (total != man->snap.total_size)
        return bad_manifest(im, err, "total_size is %" PRIu64 ", its files add up to %" PRIu64,
                            man->snap.total_size, total);
    return TK_OK;
}

/* Steps 1-3: the first entry, the directory, the manifest checked. */
static tk_code read_manifest(importer *im, const char *source, tk_err *err) {
    tk_arc_entry e;
    char id[TK_SNAP_ID_MAX], path[PATH_MAX], *text;
    int end;
    tk_code rc = tk_arc_next(im->r, &e, &end, err);
    if (rc != TK_OK) return rc;
    if (end || strcmp(e.name, TK_MANIFEST_FILE) != 0)
        return tk_fail(err, TK_INVALID, "%s: not a takhin snapshot archive (its first entry is "
                       "not manifest.json)", im->what);
    if ((rc = read_small(im, &e, MANIFEST_MAX, &text, err)) != TK_OK) return rc;
    rc = manifest_id(im, text, (size_t)e.size, id, err);
    if (rc == TK_OK) {
        snprintf(im->what, sizeof im->what, "import %s%s%s", id, source ? " from " : "",
                 source ? source : "");
        rc = tk_snap_import_begin(im->m, id, im->tmp, sizeof im->tmp, &im->tmp_fd, err);
    }
    if (rc == TK_OK && (tk_path_join(path, sizeof path, im->tmp, TK_MANIFEST_FILE) < 0 ||
                        tk_write_new(path, text, (size_t)e.size) < 0))
        rc = tk_fail_errno(err, errno, "%s: write %s/" TK_MANIFEST_FILE, im->what, im->tmp);
    free(text);
    if (rc != TK_OK) return rc;
    if ((rc = tk_manifest_read(path, &im->man, err)) != TK_OK)
        return tk_fail_prefix(err, TK_CORRUPT, "%s: the archive's manifest", im->what);
    if (strcmp(im->man.snap.id, id) != 0)
        return bad_manifest(im, err, "it names snapshot %s", im->man.snap.id);
    if (!(im->sorted = sort_files(&im->man)) || !(im->got = tk_calloc(im->man.nfiles + 1, 1)))
        return tk_fail(err, TK_NOMEM, "%s: out of memory", im->what);
    if ((rc = check_files(im, err)) != TK_OK) return rc;
    if ((rc = check_segments(im, err)) != TK_OK) return rc;
    im->j.total = im->man.snap.total_size;
    return TK_OK;
}

typedef struct since_arg {
    char since[TK_SNAP_ID_MAX];
    int format_ok;
} since_arg;

static int get_since(void *root, void *ud) {
    since_arg *a = ud;
    json_t *v = json_object_get(root, "format");
    a->format_ok = json_is_integer(v) && json_integer_value(v) == ARCHIVE_FORMAT;
    return id_field(root, "since", a->since);
}

/* Step 4: since.json names the base, which must be here. */
static tk_code read_since(importer *im, const tk_arc_entry *e, tk_err *err) {
    since_arg a = { "", 0 };
    char *text, why[200] = "";
    int r;
    tk_code rc;
    if (im->files || im->have_base || e->index != 2)
        return tk_fail(err, TK_INVALID, "%s: " TK_ARC_SINCE_FILE " is entry %u; it may only come "
                       "right after manifest.json", im->what, e->index);
    if ((rc = read_small(im, e, SINCE_MAX, &text, err)) != TK_OK) return rc;
    r = tk_json_parse(text, strlen(text), get_since, &a, why, sizeof why);
    free(text);
    if (r == -2) return tk_fail(err, TK_NOMEM, "%s: out of memory", im->what);
    if (r == -1 && why[0])
        return tk_fail(err, TK_CORRUPT, "%s: " TK_ARC_SINCE_FILE " does not parse: %s", im->what, why);
    if (!a.format_ok)
        return tk_fail(err, TK_CORRUPT, "%s: " TK_ARC_SINCE_FILE ": archive format is not %d", im->what,
                       ARCHIVE_FORMAT);
    if (r < 0 || strcmp(a.since, im->man.snap.id) == 0)
        return tk_fail(err, TK_CORRUPT, "%s: " TK_ARC_SINCE_FILE " names no valid base snapshot", im->what);
    snprintf(im->since, sizeof im->since, "%s", a.since);
    rc = tk_snap_read_manifest(im->m, im->since, &im->base, err);
    if (rc == TK_NOT_FOUND)
        return tk_fail(err, TK_NOT_FOUND, "%s: the archive is incremental: it needs snapshot %s, "
                       "which is not in %s (import that one first)", im->what, im->since,
                       tk_snapmgr_dir(im->m));
    if (rc != TK_OK) return tk_fail_prefix(err, rc, "%s: its base snapshot %s", im->what, im->since);
    im->have_base = 1;
    return TK_OK;
}

/* ------------------------------------------------------------------ */
/* Import: the files                                                    */
/* ------------------------------------------------------------------ */

/* Step 5: one entry's data into .tmp-<id>/<name>, checked. */
static tk_code receive(importer *im, const tk_mfile *f, tk_err *err) {
    char path[PATH_MAX];
    uint32_t crc = 0;
    uint64_t written = 0, started = 0;
    tk_code rc = TK_OK;
    int fd;
    if (tk_path_join(path, sizeof path, im->tmp, f->name) < 0)
        return tk_fail_errno(err, ENAMETOOLONG, "%s: %s", im->what, f->name);
    if ((fd = tk_open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644)) < 0)
        return tk_fail_errno(err, errno, "%s: create %s", im->what, path);
    for (;;) {
        const void *p;
        size_t n;
        if (canceled(&im->j)) { rc = cancel_failure(im->what, err); break; }
        if ((rc = tk_arc_data(im->r, &p, &n, err)) != TK_OK || n == 0) break;
        if (tk_write_all(fd, p, n) < 0) {
            rc = tk_fail_errno(err, errno, "%s: write %s", im->what, path);
            break;
        }
        crc = tk_crc32c(crc, p, n);
        written += n;
        tk_arc_writeback(fd, &started, written, 0);
        advance(&im->j, n);
    }
    if (rc == TK_OK) tk_arc_writeback(fd, &started, written, 1);
    if (close(fd) < 0 && rc == TK_OK) rc = tk_fail_errno(err, errno, "%s: close %s", im->what, path);
    if (rc == TK_OK && crc != f->crc)
        rc = tk_fail(err, TK_CORRUPT, "%s: %s fails its checksum (crc32c %08" PRIx32 ", the "
                     "manifest says %08" PRIx32 ")", im->what, f->name, crc, f->crc);
    return rc;
}

/* One file entry: a file of the manifest, not seen before, of its size. */
static tk_code read_file_entry(importer *im, const tk_arc_entry *e, tk_err *err) {
    const tk_mfile *f;
    size_t i;
    tk_code rc;
    if (strcmp(e->name, TK_MANIFEST_FILE) == 0 || strcmp(e->name, TK_ARC_SINCE_FILE) == 0)
        return tk_fail(err, TK_INVALID, "%s: entry %u is a second %s", im->what, e->index, e->name);
    if (!tk_is_segment_file(e->name))
        return tk_fail(err, TK_INVALID, "%s: entry %u (%s) is not a segment file", im->what,
                       e->index, e->name);
    if (!(f = find_file(im->sorted, im->man.nfiles, e->name)))
        return tk_fail(err, TK_CORRUPT, "%s: entry %u (%s) is not in the archive's manifest",
                       im->what, e->index, e->name);
    i = (size_t)(f - im->man.files);
    if (im->got[i])
        return tk_fail(err, TK_INVALID, "%s: entry %u: the archive holds %s twice", im->what,
                       e->index, e->name);
    if (e->size != f->size)
        return tk_fail(err, TK_CORRUPT, "%s: %s has %" PRIu64 " bytes in the archive, the "
                       "manifest says %" PRIu64, im->what, e->name, e->size, f->size);
    if ((rc = receive(im, f, err)) != TK_OK) return rc;
    im->got[i] = 1;
    im->files++;
    return TK_OK;
}

/* Step 6: a file the archive does not carry, from the base. */
static tk_code from_base(importer *im, const tk_mfile *f, const tk_mfile **base_sorted,
                         tk_err *err) {
    char src[PATH_MAX], dst[PATH_MAX];
    const tk_mfile *b = find_file(base_sorted, im->base.nfiles, f->name);
    uint64_t size;
    uint32_t crc;
    int linked;
    tk_code rc;
    if (!b || b->size != f->size || b->crc != f->crc)
        return tk_fail(err, TK_CORRUPT, "%s: the archive lacks %s, and its base snapshot %s %s",
                       im->what, f->name, im->since, b ? "holds another one" : "has none");
    if ((rc = tk_snap_file_path(im->m, im->since, f->name, src, sizeof src, err)) != TK_OK)
        return rc;
    if (tk_path_join(dst, sizeof dst, im->tmp, f->name) < 0)
        return tk_fail_errno(err, ENAMETOOLONG, "%s: %s", im->what, f->name);
    if (tk_place(src, dst, f->size, 1, &linked) < 0)
        return errno == ENODATA
               ? tk_fail(err, TK_CORRUPT, "%s: %s is shorter than its manifest says", im->what, src)
               : tk_fail_errno(err, errno, "%s: place %s at %s", im->what, src, dst);
    if (tk_file_sum(dst, &size, &crc) < 0) return tk_fail_errno(err, errno, "%s: read %s", im->what, dst);
    if (size != f->size || crc != f->crc)
        return tk_fail(err, TK_CORRUPT, "%s: %s, from the base snapshot, fails its checksum "
                       "(%" PRIu64 " bytes, crc32c %08" PRIx32 "; the manifest says %" PRIu64
                       ", %08" PRIx32 ")", im->what, src, size, crc, f->size, f->crc);
    advance(&im->j, size);
    return TK_OK;
}

static tk_code complete(importer *im, tk_err *err) {
    const tk_mfile **base_sorted = NULL;
    tk_code rc = TK_OK;
    if (im->have_base && !(base_sorted = sort_files(&im->base)))
        return tk_fail(err, TK_NOMEM, "%s: out of memory", im->what);
    for (size_t i = 0; rc == TK_OK && i < im->man.nfiles; i++) {
        if (im->got[i]) continue;
        if (canceled(&im->j)) rc = cancel_failure(im->what, err);
        else if (!im->have_base)
            rc = tk_fail(err, TK_CORRUPT, "%s: the archive lacks %s (truncated, or not made "
                         "by takhin)", im->what, im->man.files[i].name);
        else rc = from_base(im, &im->man.files[i], base_sorted, err);
    }
    free(base_sorted);
    return rc;
}

static tk_code run_import(importer *im, const char *source, tk_err *err) {
    tk_code rc = read_manifest(im, source, err);
    while (rc == TK_OK) {
        tk_arc_entry e;
        int end;
        if ((rc = tk_arc_next(im->r, &e, &end, err)) != TK_OK || end) break;
        rc = strcmp(e.name, TK_ARC_SINCE_FILE) == 0 && !im->have_base ? read_since(im, &e, err)
                                                               : read_file_entry(im, &e, err);
    }
    if (rc == TK_OK) rc = complete(im, err);
    if (rc == TK_OK) {
        im->man.snap.mode = TK_SNAP_COPY;       /* its files share no blocks with a log */
        rc = tk_snap_import_publish(im->m, im->tmp, &im->man, err);
    }
    return rc;
}

tk_code tk_snap_import_ex(tk_snapmgr *m, int fd, const tk_import_opts *opts, tk_snapshot *out,
                          tk_err *err) {
    tk_import_opts defaults;
    importer im;
    tk_code rc;
    if (!opts) { tk_import_opts_init(&defaults); opts = &defaults; }
    memset(&im, 0, sizeof im);
    im.m = m;
    im.tmp_fd = -1;
    im.j.progress = opts->progress;
    im.j.progress_ud = opts->progress_ud;
    im.j.cancel = opts->cancel;
    im.j.cancel_ud = opts->cancel_ud;
    snprintf(im.what, sizeof im.what, "import%s%s", opts->name ? " from " : "",
             opts->name ? opts->name : "");
    rc = tk_arc_reader_open(tk_arc_read_fd, &fd, im.what, &im.r, err);
    if (rc == TK_OK) rc = run_import(&im, opts->name, err);
    if (rc != TK_OK && im.tmp_fd >= 0) tk_snap_import_abort(im.tmp, im.tmp_fd);
    else if (im.tmp_fd >= 0) close(im.tmp_fd);
    if (rc == TK_OK && out) {
        *out = im.man.snap;
        im.man.snap.segment_offsets = NULL;
    }
    tk_arc_reader_free(im.r);
    free(im.sorted);
    free(im.got);
    tk_manifest_free(&im.man);
    tk_manifest_free(&im.base);
    return rc;
}

tk_code tk_snap_import(tk_snapmgr *m, int fd, tk_snapshot *out, tk_err *err) {
    return tk_snap_import_ex(m, fd, NULL, out, err);
}

tk_code tk_snap_import_file(tk_snapmgr *m, const char *path, const tk_import_opts *opts,
                            tk_snapshot *out, tk_err *err) {
    tk_import_opts o;
    struct stat st;
    int fd;
    tk_code rc;
    if (!path || !*path) return tk_fail(err, TK_INVALID, "import: empty path");
    if (opts) o = *opts;
    else tk_import_opts_init(&o);
    if (!o.name) o.name = path;
    if ((fd = tk_open(path, O_RDONLY | O_CLOEXEC, 0)) < 0)
        return tk_fail_errno(err, errno, "import from %s", path);
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
        rc = tk_fail(err, TK_INVALID, "import from %s: it is a directory", path);
    else
        rc = tk_snap_import_ex(m, fd, &o, out, err);
    close(fd);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Background jobs                                                      */
/* ------------------------------------------------------------------ */

/* What an export or import job keeps: its own copies of the strings, the
 * descriptor or the path (the caller keeps a descriptor open until the
 * job is done). */
typedef struct moving {
    tk_snapmgr *m;
    char id[TK_SNAP_ID_MAX];
    char *path, *since, *name;
    int fd;
    tk_export_opts eo;
    tk_import_opts io;
} moving;

static void free_moving(void *arg) {
    moving *x = arg;
    if (!x) return;
    free(x->path);
    free(x->since);
    free(x->name);
    free(x);
}

static void job_progress(void *ud, uint64_t done, uint64_t total) {
    tk_job_set_progress(ud, done, total);
}

static int job_canceled(void *ud) { return tk_job_canceled(ud); }

static tk_code export_job(tk_job *bg, void *arg, tk_err *err) {
    moving *x = arg;
    uint64_t written = 0;
    tk_code rc;
    x->eo.progress = job_progress;
    x->eo.progress_ud = bg;
    x->eo.cancel = job_canceled;
    x->eo.cancel_ud = bg;
    x->eo.written = &written;
    rc = x->path ? tk_snap_export_file(x->m, x->id, x->path, &x->eo, err)
                 : tk_snap_export(x->m, x->id, x->fd, &x->eo, err);
    if (rc == TK_OK) tk_job_set_count(bg, (size_t)written);
    return rc;
}

static tk_code import_job(tk_job *bg, void *arg, tk_err *err) {
    moving *x = arg;
    tk_snapshot snap;
    char path[PATH_MAX];
    tk_code rc;
    x->io.progress = job_progress;
    x->io.progress_ud = bg;
    x->io.cancel = job_canceled;
    x->io.cancel_ud = bg;
    rc = x->path ? tk_snap_import_file(x->m, x->path, &x->io, &snap, err)
                 : tk_snap_import_ex(x->m, x->fd, &x->io, &snap, err);
    if (rc != TK_OK) return rc;
    if (tk_snap_path(x->m, snap.id, path, sizeof path, NULL) != TK_OK) path[0] = '\0';
    tk_job_set_snapshot(bg, &snap, path);          /* the job owns snap now */
    return TK_OK;
}

static moving *new_moving(tk_snapmgr *m, const char *path, int fd, const char *name) {
    moving *x = tk_calloc(1, sizeof *x);
    if (!x) return NULL;
    x->m = m;
    x->fd = fd;
    if ((path && !(x->path = tk_strdup(path))) || (name && !(x->name = tk_strdup(name)))) {
        free_moving(x);
        return NULL;
    }
    return x;
}

tk_code tk_snap_export_async(tk_snapmgr *m, const char *id, int fd, const char *path,
                             const tk_export_opts *opts, tk_job **out, tk_err *err) {
    moving *x;
    tk_code rc = tk_snap_check_id(id, err);
    *out = NULL;
    if (rc != TK_OK) return rc;
    if (!(x = new_moving(m, path, fd, opts ? opts->name : NULL)))
        return tk_fail(err, TK_NOMEM, "export %s: out of memory", id);
    snprintf(x->id, sizeof x->id, "%s", id);
    if (opts) x->eo = *opts;
    else tk_export_opts_init(&x->eo);
    x->eo.name = x->name;
    if (opts && opts->since && !(x->since = tk_strdup(opts->since))) {
        free_moving(x);
        return tk_fail(err, TK_NOMEM, "export %s: out of memory", id);
    }
    x->eo.since = x->since;
    return tk_job_start(tk_snap_jobs(m), "export", export_job, x, free_moving, out, err);
}

tk_code tk_snap_import_async(tk_snapmgr *m, int fd, const char *path, const tk_import_opts *opts,
                             tk_job **out, tk_err *err) {
    moving *x;
    *out = NULL;
    if (!(x = new_moving(m, path, fd, opts ? opts->name : NULL)))
        return tk_fail(err, TK_NOMEM, "import into %s: out of memory", tk_snapmgr_dir(m));
    if (opts) x->io = *opts;
    else tk_import_opts_init(&x->io);
    x->io.name = x->name;
    return tk_job_start(tk_snap_jobs(m), "import", import_job, x, free_moving, out, err);
}
