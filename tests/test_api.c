/*
 * test_api.c -- the C interface's promise that `err` may be NULL.
 *
 * takhin.h: "Every function that can fail returns a tk_code and, when
 * given a tk_err, fills it".  A C caller that only wants the code passes
 * NULL.  Each failing path below is taken twice, once with a tk_err (to
 * show what failed) and once with err == NULL: both must return the same,
 * expected code, and the second must not crash.  The paths are those that
 * build their message from another one (a prefix, a scratch error passed
 * on): a damaged record read, a damaged snapshot restored or verified, a
 * catalog that cannot be read; and plain ones: an offset out of range, a
 * log path that is a file, a label too long, a target not empty, an
 * unknown or malformed id, a snapshot directory that is the log's own.
 *
 * Output is TAP.  Everything happens under one temporary directory,
 * removed at the end.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "takhin.h"
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256];

/* ------------------------------------------------------------------ */
/* Files                                                                */
/* ------------------------------------------------------------------ */

static const char *path_of(char *out, const char *name) {
    snprintf(out, PATH_MAX, "%s/%s", root, name);
    return out;
}

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb; (void)type; (void)ftw;
    return remove(path);
}

static void rmtree(const char *dir) {
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* Inverts the bits of the byte at pos. */
static int flip_byte(const char *path, off_t pos) {
    unsigned char b;
    int fd = open(path, O_RDWR), rc = -1;
    if (fd < 0) return -1;
    if (pread(fd, &b, 1, pos) == 1) {
        b = (unsigned char)~b;
        rc = pwrite(fd, &b, 1, pos) == 1 ? 0 : -1;
    }
    close(fd);
    return rc;
}

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* ------------------------------------------------------------------ */
/* Checks                                                               */
/* ------------------------------------------------------------------ */

/* One failing path: the code it gave with a tk_err (whose message is
 * shown when it is not the one wanted) and with err == NULL. */
static void expect(const char *what, tk_code want, tk_code with_err, const tk_err *e,
                   tk_code without_err) {
    ok(with_err == want, "%s: %s (given a tk_err)", what, tk_code_name(want));
    if (with_err != want) {
        char why[600];
        snprintf(why, sizeof why, "got %s: %s", tk_code_name(with_err), e->msg);
        diag(why);
    }
    ok(without_err == want, "%s: %s with err == NULL (got %s)", what, tk_code_name(want),
       tk_code_name(without_err));
}

/* ------------------------------------------------------------------ */
/* The log                                                              */
/* ------------------------------------------------------------------ */

#define RECORDS 60

static void value_of(char *out, size_t cap, int64_t o) {
    snprintf(out, cap, "value %lld ----------------------------------------", (long long)o);
}

/* A log of RECORDS records in segments of about 500 bytes. */
static tk_log *make_log(const char *dir, tk_log_opts *o) {
    tk_log *log = NULL;
    tk_err e;
    tk_log_opts_init(o);
    o->max_segment_size = 500;
    o->index_interval_bytes = 64;
    if (tk_log_open(dir, o, &log, &e) != TK_OK) {
        ok(0, "open %s", dir);
        diag(e.msg);
        return NULL;
    }
    for (int64_t i = 0; i < RECORDS; i++) {
        char v[80];
        int64_t first;
        tk_rec_in r = { "key", 3, 1, v, 0, 1000 + i };
        value_of(v, sizeof v, i);
        r.value_len = strlen(v);
        if (tk_log_append(log, &r, 1, &first, &e) != TK_OK || first != i) {
            ok(0, "append %lld", (long long)i);
            diag(e.msg);
        }
    }
    return log;
}

static void test_log(void) {
    char dir[PATH_MAX], file[PATH_MAX], seg[PATH_MAX + 32];
    tk_log_opts o;
    tk_record rec;
    tk_log *log, *bad = NULL;
    tk_err e;
    tk_code a, b;

    memset(&rec, 0, sizeof rec);
    if (!(log = make_log(path_of(dir, "log"), &o))) return;

    a = tk_log_read(log, RECORDS, &rec, &e);
    b = tk_log_read(log, RECORDS, &rec, NULL);
    expect("tk_log_read at the high water mark", TK_OUT_OF_RANGE, a, &e, b);
    a = tk_log_read(log, -1, &rec, &e);
    b = tk_log_read(log, -1, &rec, NULL);
    expect("tk_log_read below zero", TK_OUT_OF_RANGE, a, &e, b);
    a = tk_log_truncate(log, RECORDS + 1, &e);
    b = tk_log_truncate(log, RECORDS + 1, NULL);
    expect("tk_log_truncate beyond the high water mark", TK_OUT_OF_RANGE, a, &e, b);
    a = tk_log_open(dir, &o, &bad, &e);
    b = tk_log_open(dir, &o, &bad, NULL);
    expect("tk_log_open of a log another writer holds", TK_LOCKED, a, &e, b);
    ok(bad == NULL, "a failed tk_log_open leaves *out NULL");
    tk_log_close(log);

    /* A damaged record in the middle of a sealed segment. */
    snprintf(seg, sizeof seg, "%s/%020d.log", dir, 0);
    ok(flip_byte(seg, 100) == 0, "damage a byte of %s", seg);
    o.mode = TK_LOG_READONLY;
    if (tk_log_open(dir, &o, &log, &e) != TK_OK) {
        ok(0, "reopen %s read-only", dir);
        diag(e.msg);
    } else {
        int64_t o_bad = -1;
        for (int64_t i = 0; i < RECORDS && o_bad < 0; i++)
            if (tk_log_read(log, i, &rec, &e) == TK_CORRUPT) o_bad = i;
        ok(o_bad >= 0, "a record of the damaged segment reads CORRUPT");
        if (o_bad >= 0) {
            a = tk_log_read(log, o_bad, &rec, &e);
            b = tk_log_read(log, o_bad, &rec, NULL);
            expect("tk_log_read of a damaged record", TK_CORRUPT, a, &e, b);
        }
        tk_log_close(log);
    }
    tk_record_free(&rec);

    /* A log directory that is a regular file. */
    write_file(path_of(file, "afile"), "not a log\n");
    tk_log_opts_init(&o);
    a = tk_log_open(file, &o, &bad, &e);
    b = tk_log_open(file, &o, &bad, NULL);
    ok(a != TK_OK && bad == NULL, "tk_log_open of a regular file fails (%s: %s)", tk_code_name(a), e.msg);
    expect("tk_log_open of a regular file", a, a, &e, b);

    o.max_segment_size = 0;
    a = tk_log_open(path_of(dir, "bad-opts"), &o, &bad, &e);
    b = tk_log_open(path_of(dir, "bad-opts"), &o, &bad, NULL);
    expect("tk_log_open with max_segment_size 0", TK_INVALID, a, &e, b);
}

/* ------------------------------------------------------------------ */
/* Snapshots                                                            */
/* ------------------------------------------------------------------ */

/* An export into a pipe makes the pipe as large as one of its writes
 * (1 MiB: a 64 KiB pipe would wake the reader 16 times a write), and the
 * reader gets every byte the job counts. */
static void export_to_pipe(tk_snapmgr *mgr, const char *id) {
    static char buf[1 << 16];
    int fds[2], size;
    uint64_t got = 0;
    tk_export_opts xo;
    tk_job *job = NULL;
    tk_err e;
    if (pipe(fds) < 0) {
        ok(0, "pipe");
        return;
    }
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    tk_export_opts_init(&xo);
    if (tk_snap_export_async(mgr, id, fds[1], NULL, &xo, &job, &e) != TK_OK) {
        ok(0, "tk_snap_export_async into a pipe");
        diag(e.msg);
    } else {
        for (;;) {
            ssize_t n = read(fds[0], buf, sizeof buf);
            if (n > 0) { got += (uint64_t)n; continue; }
            if (n < 0 && errno != EAGAIN) break;
            if (tk_job_done(job)) {
                while ((n = read(fds[0], buf, sizeof buf)) > 0) got += (uint64_t)n;
                break;
            }
            usleep(1000);
        }
        size = fcntl(fds[0], F_GETPIPE_SZ);
        ok(tk_job_result(job, &e) == TK_OK, "an export into a pipe succeeds");
        ok(got == tk_job_count(job) && got > 0, "the reader got the %zu bytes exported (%llu)",
           tk_job_count(job), (unsigned long long)got);
        ok(size >= 1 << 20, "the export made the pipe 1 MiB (%d bytes)", size);
        tk_job_free(job);
    }
    close(fds[0]);
    close(fds[1]);
}

static void test_snapshots(void) {
    char dir[PATH_MAX], snapdir[PATH_MAX], target[PATH_MAX], path[PATH_MAX + 64];
    char label[300];
    tk_log_opts o;
    tk_create_opts co;
    tk_restore_opts ro;
    tk_snapshot snap, got;
    tk_snapmgr *mgr = NULL, *bad = NULL;
    tk_snapshot *list = NULL;
    size_t n = 0;
    tk_log *log;
    tk_err e;
    tk_code a, b;

    if (!(log = make_log(path_of(dir, "snaplog"), &o))) return;

    a = tk_snapmgr_open(dir, dir, TK_SNAP_LINK, &bad, &e);
    b = tk_snapmgr_open(dir, dir, TK_SNAP_LINK, &bad, NULL);
    expect("tk_snapmgr_open with the log's own directory", TK_INVALID, a, &e, b);
    ok(bad == NULL, "a failed tk_snapmgr_open leaves *out NULL");

    /* Copy mode: damaging the snapshot's files leaves the log's alone. */
    if (tk_snapmgr_open(dir, path_of(snapdir, "snaps"), TK_SNAP_COPY, &mgr, &e) != TK_OK) {
        ok(0, "tk_snapmgr_open");
        diag(e.msg);
        tk_log_close(log);
        return;
    }

    tk_create_opts_init(&co);
    memset(label, 'L', sizeof label);
    label[TK_SNAP_LABEL_MAX] = '\0';                   /* 256 bytes: one too many */
    co.label = label;
    memset(&snap, 0, sizeof snap);
    a = tk_snap_create(mgr, log, &co, &snap, &e);
    b = tk_snap_create(mgr, log, &co, &snap, NULL);
    expect("tk_snap_create with a label of 256 bytes", TK_INVALID, a, &e, b);
    label[TK_SNAP_LABEL_MAX - 1] = '\0';               /* 255 bytes: the most there is room for */
    if (tk_snap_create(mgr, log, &co, &snap, &e) != TK_OK) {
        ok(0, "tk_snap_create with a label of 255 bytes");
        diag(e.msg);
        tk_snapmgr_close(mgr);
        tk_log_close(log);
        return;
    }
    ok(snap.num_segments >= 3, "the snapshot has %zu segments", snap.num_segments);
    export_to_pipe(mgr, snap.id);
    tk_log_close(log);

    tk_restore_opts_init(&ro);
    a = tk_snap_restore(mgr, "1600000000000-deadbeef", path_of(target, "r-unknown"), &ro, &e);
    b = tk_snap_restore(mgr, "1600000000000-deadbeef", target, &ro, NULL);
    expect("tk_snap_restore of an unknown id", TK_NOT_FOUND, a, &e, b);
    a = tk_snap_get(mgr, "1600000000000-deadbeef", &got, &e);
    b = tk_snap_get(mgr, "1600000000000-deadbeef", &got, NULL);
    expect("tk_snap_get of an unknown id", TK_NOT_FOUND, a, &e, b);
    a = tk_snap_verify(mgr, "1600000000000-deadbeef", NULL, &e);
    b = tk_snap_verify(mgr, "1600000000000-deadbeef", NULL, NULL);
    expect("tk_snap_verify of an unknown id", TK_NOT_FOUND, a, &e, b);
    a = tk_snap_delete(mgr, "1600000000000-deadbeef", &e);
    b = tk_snap_delete(mgr, "1600000000000-deadbeef", NULL);
    expect("tk_snap_delete of an unknown id", TK_NOT_FOUND, a, &e, b);
    a = tk_snap_get(mgr, "../x", &got, &e);
    b = tk_snap_get(mgr, "../x", &got, NULL);
    expect("tk_snap_get of a malformed id", TK_INVALID, a, &e, b);
    a = tk_snap_check_id("a/b", &e);
    b = tk_snap_check_id("a/b", NULL);
    expect("tk_snap_check_id of a malformed id", TK_INVALID, a, &e, b);

    ro.upto_offset = RECORDS + 1;
    a = tk_snap_restore(mgr, snap.id, path_of(target, "r-upto"), &ro, &e);
    b = tk_snap_restore(mgr, snap.id, target, &ro, NULL);
    expect("tk_snap_restore with upto_offset beyond the snapshot", TK_OUT_OF_RANGE, a, &e, b);
    tk_restore_opts_init(&ro);

    path_of(target, "busy");
    mkdir(target, 0755);
    snprintf(path, sizeof path, "%s/keep.txt", target);
    write_file(path, "precious\n");
    a = tk_snap_restore(mgr, snap.id, target, &ro, &e);
    b = tk_snap_restore(mgr, snap.id, target, &ro, NULL);
    expect("tk_snap_restore into a directory that is not empty", TK_NOT_EMPTY, a, &e, b);

    /* A flipped byte in the snapshot's first .log. */
    if (tk_snap_path(mgr, snap.id, path, sizeof path, NULL) == TK_OK) {
        size_t len = strlen(path);
        snprintf(path + len, sizeof path - len, "/%020d.log", 0);
        ok(flip_byte(path, 50) == 0, "damage a byte of the snapshot's %020d.log", 0);
    } else {
        ok(0, "tk_snap_path with err == NULL");
    }
    a = tk_snap_verify(mgr, snap.id, NULL, &e);
    b = tk_snap_verify(mgr, snap.id, NULL, NULL);
    expect("tk_snap_verify of a snapshot with a flipped byte", TK_CORRUPT, a, &e, b);
    a = tk_snap_restore(mgr, snap.id, path_of(target, "r-corrupt"), &ro, &e);
    b = tk_snap_restore(mgr, snap.id, target, &ro, NULL);
    expect("tk_snap_restore of a snapshot with a flipped byte", TK_CORRUPT, a, &e, b);
    ok(!exists(target), "the refused restore created nothing");
    ro.replace = 1;
    a = tk_snap_restore(mgr, snap.id, dir, &ro, &e);
    b = tk_snap_restore(mgr, snap.id, dir, &ro, NULL);
    expect("tk_snap_restore in place of a snapshot with a flipped byte", TK_CORRUPT, a, &e, b);
    tk_log_opts_init(&o);
    o.mode = TK_LOG_READONLY;
    if (tk_log_open(dir, &o, &log, NULL) == TK_OK) {
        ok(tk_log_high_water_mark(log) == RECORDS, "the refused in-place restore left the log alone");
        tk_log_close(log);
    } else {
        ok(0, "reopen %s after the refused in-place restore", dir);
    }

    /* A catalog that cannot be read (a directory where snapshots.json goes). */
    snprintf(path, sizeof path, "%s/snapshots.json", snapdir);
    ok(unlink(path) == 0 && mkdir(path, 0755) == 0, "snapshots.json made a directory");
    a = tk_snap_list(mgr, &list, &n, &e);
    if (a == TK_OK) tk_snapshot_list_free(list, n);
    list = NULL;
    b = tk_snap_list(mgr, &list, &n, NULL);
    if (b == TK_OK) tk_snapshot_list_free(list, n);
    ok(a != TK_OK, "tk_snap_list of an unreadable catalog fails (%s: %s)", tk_code_name(a), e.msg);
    expect("tk_snap_list of an unreadable catalog", a, a, &e, b);

    tk_snapshot_free(&snap);
    tk_snapmgr_close(mgr);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/takhin-test-api.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(root)) {
        printf("Bail out! mkdtemp %s\n", root);
        return 1;
    }
    test_log();
    test_snapshots();
    rmtree(root);
    return tap_done();
}
