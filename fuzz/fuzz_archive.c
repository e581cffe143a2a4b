/*
 * fuzz_archive.c -- the archive reader and import (archive.c, transfer.c)
 * on hostile streams.
 *
 * Once per process the harness writes a small log (two snapshots' worth of
 * records, deterministic: fixed timestamps, small segments) and makes, by
 * hand, two snapshot directories with fixed ids: A (the log after its first
 * records) and B (after all of them).  The target manager holds A only, so
 * an incremental archive "B since A" imports there.
 *
 * Each input is used twice:
 *   1. read with the archive reader from memory, every entry and all its
 *      data: no crash, no leak; every entry handed out is a plain file
 *      name (no '/', not "." or ".."), of the size its data had; codes are
 *      CORRUPT or INVALID only;
 *   2. imported into the target manager from a descriptor (memfd).  It may
 *      succeed -- then the snapshot verifies, is listed, and is deleted
 *      again -- or fail with CORRUPT, INVALID, NOT_FOUND (a missing base)
 *      or EXISTS (snapshot A's id) -- or CANCELED: an input whose last byte
 *      is odd is canceled after (first byte % 5) of the checks made between
 *      blocks and files.  Either way the target's snapshot
 *      directory then holds exactly what it held before (no .tmp-*, no
 *      other entry), A's files are untouched (checked every 64 runs and at
 *      the end of a replay), and the scratch directory holds nothing new:
 *      nothing was written outside the manager.
 *
 * Seeds (fuzz/corpus/fuzz_archive/): the archives of A and B, plain and
 * zstd, and of B since A, written by this harness itself:
 *
 *     FUZZ_ARCHIVE_SEEDS=fuzz/corpus/fuzz_archive build-fuzz/fuzz_archive
 *
 * (writes them and exits; the bytes depend only on the engine and on the
 * libzstd version).  FUZZ_DEBUG=1 prints what each import returned.
 */
#include "common.c"

#include <sys/mman.h>

#include "takhin.h"
#include "archive.h"
#include "fs.h"
#include "manifest.h"
#include "names.h"

#define ID_A "1700000000000-0000000a"
#define ID_B "1700000000001-0000000b"
#define NREC_A 30
#define NREC_B 55

static char root[PATH_MAX], log_dir[PATH_MAX], src_dir[PATH_MAX], tgt_log[PATH_MAX],
    tgt_dir[PATH_MAX];
static tk_snapmgr *src, *tgt;
static int mem_fd = -1;
static fz_buf listing, a_files;
static unsigned long runs;

/* ------------------------------------------------------------------ */
/* The fixture                                                          */
/* ------------------------------------------------------------------ */

static void append_records(int from, int to) {
    tk_log_opts o;
    tk_log *log;
    tk_err e;
    tk_log_opts_init(&o);
    o.max_segment_size = 600;
    o.index_interval_bytes = 100;
    FZ_CHECK(tk_log_open(log_dir, &o, &log, &e) == TK_OK, "open %s: %s", log_dir, e.msg);
    for (int i = from; i < to; i++) {
        char key[16], value[64];
        tk_rec_in r;
        int64_t first;
        snprintf(key, sizeof key, "k%d", i % 7);
        snprintf(value, sizeof value, "{\"n\":%d,\"v\":\"%.*s\"}", i, i % 23, "xxxxxxxxxxxxxxxxxxxxxxx");
        memset(&r, 0, sizeof r);
        r.key = key;
        r.key_len = strlen(key);
        r.has_key = 1;
        r.value = value;
        r.value_len = strlen(value);
        r.timestamp = 1700000000000LL + i;
        FZ_CHECK(tk_log_append(log, &r, 1, &first, &e) == TK_OK, "append: %s", e.msg);
    }
    tk_log_close(log);
}

static int cmp_names(const void *a, const void *b) {
    int64_t x, y;
    tk_ext ex, ey;
    tk_parse_seg_name(*(char *const *)a, &x, &ex);
    tk_parse_seg_name(*(char *const *)b, &y, &ey);
    return x != y ? (x < y ? -1 : 1) : (int)ex - (int)ey;
}

/* snapdir/snapshot-<id>/: a copy of the log's segment files and their
 * manifest, as snapshot.c would have made it. */
static void make_snapshot(const char *snapdir, const char *id, int64_t ts, int64_t hwm) {
    char dir[PATH_MAX], path[PATH_MAX], *names[256];
    size_t n = 0;
    DIR *d = opendir(log_dir);
    struct dirent *de;
    tk_manifest man;
    tk_err e;
    fz_buf b = { 0 };
    FZ_CHECK(d != NULL, "opendir %s", log_dir);
    while ((de = readdir(d)) != NULL)
        if (tk_is_segment_file(de->d_name) && n < 256) names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    snprintf(dir, sizeof dir, "%s/snapshot-%s", snapdir, id);
    FZ_CHECK(tk_mkdir_p(dir, 0755) == 0, "mkdir %s", dir);
    memset(&man, 0, sizeof man);
    snprintf(man.snap.id, sizeof man.snap.id, "%s", id);
    man.snap.timestamp = ts;
    man.snap.seq = 1;
    man.snap.high_water_mark = hwm;
    man.snap.mode = TK_SNAP_COPY;
    man.files = calloc(n, sizeof *man.files);
    man.snap.segment_offsets = calloc(n, sizeof(int64_t));
    for (size_t i = 0; i < n; i++) {
        int64_t base;
        tk_ext ext;
        tk_mfile *f = &man.files[man.nfiles++];
        tk_parse_seg_name(names[i], &base, &ext);
        if (ext == TK_EXT_LOG) man.snap.segment_offsets[man.snap.num_segments++] = base;
        snprintf(path, sizeof path, "%s/%s", log_dir, names[i]);
        FZ_CHECK(fz_read_file(path, &b) == 0, "read %s", path);
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        fz_write_file(path, b.p, b.len);
        snprintf(f->name, sizeof f->name, "%s", names[i]);
        f->size = b.len;
        f->crc = tk_crc32c(0, b.p, b.len);
        man.snap.total_size += b.len;
        free(names[i]);
    }
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    FZ_CHECK(tk_manifest_write(path, &man, &e) == TK_OK, "manifest: %s", e.msg);
    tk_manifest_free(&man);
    fz_buf_free(&b);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names (and sizes) in a directory, sorted, into out; .seq (the creation
 * counter, which every import moves) left out. */
static void list_dir(const char *dir, fz_buf *out) {
    char *names[512], path[PATH_MAX], line[PATH_MAX + 32];
    size_t n = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    struct stat st;
    out->len = 0;
    FZ_CHECK(d != NULL, "opendir %s", dir);
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && strcmp(de->d_name, ".seq") &&
            n < 512)
            names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (lstat(path, &st) < 0) st.st_size = -1;
        /* the catalog and .seq change with every import: their names only */
        if (S_ISREG(st.st_mode) && names[i][0] != '.' && strcmp(names[i], "snapshots.json") != 0)
            snprintf(line, sizeof line, "%s %lld\n", names[i], (long long)st.st_size);
        else
            snprintf(line, sizeof line, "%s %c\n", names[i], S_ISDIR(st.st_mode) ? 'd' : 'f');
        fz_buf_put(out, line, strlen(line));
        free(names[i]);
    }
}

/* Snapshot A's files in the target, with their bytes. */
static void read_a(fz_buf *out) {
    char dir[PATH_MAX], path[PATH_MAX];
    fz_buf names = { 0 }, b = { 0 };
    out->len = 0;
    snprintf(dir, sizeof dir, "%s/snapshot-" ID_A, tgt_dir);
    list_dir(dir, &names);
    fz_buf_put(out, names.p, names.len);
    for (char *line = (char *)names.p; line && line < (char *)names.p + names.len;) {
        char *nl = memchr(line, '\n', (size_t)((char *)names.p + names.len - line)), *sp;
        *nl = '\0';
        if ((sp = strchr(line, ' '))) *sp = '\0';
        snprintf(path, sizeof path, "%s/%s", dir, line);
        if (fz_read_file(path, &b) == 0) fz_buf_put(out, b.p, b.len);
        line = nl + 1;
    }
    fz_buf_free(&names);
    fz_buf_free(&b);
}

static void write_seed(const char *dir, const char *name, const char *id, const char *since,
                       int zstd) {
    char path[PATH_MAX];
    tk_export_opts o;
    tk_err e;
    tk_export_opts_init(&o);
    o.since = since;
    o.compress = zstd ? TK_COMPRESS_ZSTD : TK_COMPRESS_NONE;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FZ_CHECK(tk_snap_export_file(src, id, path, &o, &e) == TK_OK, "export %s: %s", id, e.msg);
}

static void setup(void) {
    tk_err e;
    snprintf(root, sizeof root, "%s", fz_scratch("fuzz_archive"));
    snprintf(log_dir, sizeof log_dir, "%s/log", root);
    snprintf(src_dir, sizeof src_dir, "%s/src-snapshots", root);
    snprintf(tgt_log, sizeof tgt_log, "%s/target", root);
    snprintf(tgt_dir, sizeof tgt_dir, "%s/target/.snapshots", root);
    FZ_CHECK(mkdir(tgt_log, 0755) == 0, "mkdir %s", tgt_log);
    append_records(0, NREC_A);
    make_snapshot(src_dir, ID_A, 1700000000000LL, NREC_A);
    make_snapshot(tgt_dir, ID_A, 1700000000000LL, NREC_A);
    append_records(NREC_A, NREC_B);
    make_snapshot(src_dir, ID_B, 1700000001000LL, NREC_B);
    FZ_CHECK(tk_snapmgr_open(log_dir, src_dir, TK_SNAP_COPY, &src, &e) == TK_OK, "%s", e.msg);
    FZ_CHECK(tk_snapmgr_open(tgt_log, tgt_dir, TK_SNAP_COPY, &tgt, &e) == TK_OK, "%s", e.msg);
    FZ_CHECK(tk_snap_verify(tgt, ID_A, NULL, &e) == TK_OK, "fixture: %s", e.msg);
    mem_fd = memfd_create("fuzz_archive", MFD_CLOEXEC);
    FZ_CHECK(mem_fd >= 0, "memfd_create: %s", strerror(errno));
    list_dir(tgt_dir, &listing);
    read_a(&a_files);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *seeds = getenv("FUZZ_ARCHIVE_SEEDS");
    (void)argc;
    (void)argv;
    setup();
    if (seeds && *seeds) {
        FZ_CHECK(tk_mkdir_p(seeds, 0755) == 0, "mkdir %s", seeds);
        write_seed(seeds, "a.tar", ID_A, NULL, 0);
        write_seed(seeds, "b.tar", ID_B, NULL, 0);
        write_seed(seeds, "b.tar.zst", ID_B, NULL, 1);
        write_seed(seeds, "b-since-a.tar", ID_B, ID_A, 0);
        write_seed(seeds, "b-since-a.tar.zst", ID_B, ID_A, 1);
        fprintf(stderr, "fuzz_archive: seeds written to %s\n", seeds);
        exit(0);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* 1. The reader alone                                                  */
/* ------------------------------------------------------------------ */

static ssize_t read_mem(void *ud, void *buf, size_t cap) {
    fz_in *in = ud;
    size_t got;
    const unsigned char *p;
    /* short reads of varying size, as a pipe gives them */
    if (cap > 1 + (in->at * 7919) % 70000) cap = 1 + (in->at * 7919) % 70000;
    p = fz_take(in, cap, &got);
    memcpy(buf, p, got);
    return (ssize_t)got;
}

static void fuzz_reader(const uint8_t *data, size_t size) {
    fz_in in = { data, size, 0 };
    tk_arc_reader *r;
    tk_err e;
    tk_code rc;
    FZ_CHECK(tk_arc_reader_open(read_mem, &in, "fuzz", &r, &e) == TK_OK, "open: %s", e.msg);
    for (;;) {
        tk_arc_entry ent;
        uint64_t got = 0;
        int end;
        if ((rc = tk_arc_next(r, &ent, &end, &e)) != TK_OK || end) break;
        FZ_CHECK(ent.name[0] && !strchr(ent.name, '/') && strcmp(ent.name, ".") &&
                 strcmp(ent.name, ".."), "entry name '%s'", ent.name);
        for (;;) {
            const void *p;
            size_t n;
            if ((rc = tk_arc_data(r, &p, &n, &e)) != TK_OK || n == 0) break;
            got += n;
        }
        if (rc != TK_OK) break;
        FZ_CHECK(got == ent.size, "entry %s: %llu bytes of data, header says %llu", ent.name,
                 (unsigned long long)got, (unsigned long long)ent.size);
    }
    if (rc != TK_OK)
        FZ_CHECK(rc == TK_CORRUPT || rc == TK_INVALID, "reader: %s: %s", tk_code_name(rc), e.msg);
    tk_arc_reader_free(r);
}

/* ------------------------------------------------------------------ */
/* 2. Import                                                            */
/* ------------------------------------------------------------------ */

static void check_unchanged(const char *when) {
    fz_buf now = { 0 };
    list_dir(tgt_dir, &now);
    FZ_CHECK(now.len == listing.len && memcmp(now.p, listing.p, now.len) == 0,
             "%s: the target's snapshot directory changed:\n%.*s\nwas:\n%.*s", when,
             (int)now.len, (char *)now.p, (int)listing.len, (char *)listing.p);
    list_dir(root, &now);
    FZ_CHECK(now.len == strlen("log d\nsrc-snapshots d\ntarget d\n") &&
             memcmp(now.p, "log d\nsrc-snapshots d\ntarget d\n", now.len) == 0,
             "%s: the scratch directory holds something new:\n%.*s", when, (int)now.len,
             (char *)now.p);
    list_dir(tgt_log, &now);
    FZ_CHECK(now.len == strlen(".snapshots d\n") && memcmp(now.p, ".snapshots d\n", now.len) == 0,
             "%s: the target's log directory holds something new:\n%.*s", when, (int)now.len,
             (char *)now.p);
    fz_buf_free(&now);
}

static void check_a(void) {
    fz_buf now = { 0 };
    read_a(&now);
    FZ_CHECK(now.len == a_files.len && memcmp(now.p, a_files.p, now.len) == 0,
             "snapshot %s changed in the target", ID_A);
    fz_buf_free(&now);
}

static int cancel_now(void *ud) {
    int *left = ud;
    return (*left)-- <= 0;
}

static void fuzz_import(const uint8_t *data, size_t size) {
    tk_import_opts o;
    int cancel_after = 0;
    tk_snapshot snap;
    tk_err e;
    tk_code rc;
    FZ_CHECK(ftruncate(mem_fd, 0) == 0 && lseek(mem_fd, 0, SEEK_SET) == 0, "memfd reset");
    if (size) FZ_CHECK(write(mem_fd, data, size) == (ssize_t)size, "memfd write");
    FZ_CHECK(lseek(mem_fd, 0, SEEK_SET) == 0, "memfd seek");
    /* An input whose last byte is odd is canceled after a few of the
     * checks the import makes between blocks and files. */
    tk_import_opts_init(&o);
    if (size && (data[size - 1] & 1)) {
        cancel_after = data[0] % 5;
        o.cancel = cancel_now;
        o.cancel_ud = &cancel_after;
    }
    rc = tk_snap_import_ex(tgt, mem_fd, &o, &snap, &e);
    if (getenv("FUZZ_DEBUG"))
        fprintf(stderr, "import: %s%s%s\n", tk_code_name(rc), rc ? ": " : "", rc ? e.msg : "");
    if (rc == TK_OK) {
        tk_snapshot got;
        FZ_CHECK(strcmp(snap.id, ID_A) != 0, "imported a second %s", ID_A);
        FZ_CHECK(tk_snap_verify(tgt, snap.id, NULL, &e) == TK_OK, "imported %s does not "
                 "verify: %s", snap.id, e.msg);
        FZ_CHECK(tk_snap_get(tgt, snap.id, &got, &e) == TK_OK, "imported %s is not listed: %s",
                 snap.id, e.msg);
        FZ_CHECK(got.high_water_mark == snap.high_water_mark, "listed differently");
        tk_snapshot_free(&got);
        FZ_CHECK(tk_snap_delete(tgt, snap.id, &e) == TK_OK, "delete %s: %s", snap.id, e.msg);
        tk_snapshot_free(&snap);
    } else {
        FZ_CHECK(rc == TK_CORRUPT || rc == TK_INVALID || rc == TK_NOT_FOUND || rc == TK_EXISTS ||
                 (rc == TK_CANCELED && o.cancel), "import: %s: %s", tk_code_name(rc), e.msg);
    }
    check_unchanged(rc == TK_OK ? "after an import and its deletion" : "after a refused import");
    if (++runs % 64 == 0) check_a();
}

static void final_check(void) {
    if (tgt) check_a();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int registered;
    if (!registered) {
        registered = 1;
        atexit(final_check);
    }
    fuzz_reader(data, size);
    fuzz_import(data, size);
    return 0;
}
