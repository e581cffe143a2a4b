/*
 * archive.c -- tar (ustar) writer and reader, plain or zstd-compressed as a
 * whole, in bounded memory (archive.h).
 *
 * A ustar header (POSIX.1-1988, as pax and GNU tar read it):
 *
 *     0 name[100]  100 mode[8]  108 uid[8]  116 gid[8]  124 size[12]
 *     136 mtime[12]  148 chksum[8]  156 typeflag  157 linkname[100]
 *     257 magic "ustar\0"  263 version "00"  265 uname[32]  297 gname[32]
 *     329 devmajor[8]  337 devminor[8]  345 prefix[155]  500 pad[12]
 *
 * Numbers are octal text; chksum is the sum of the header's bytes with
 * chksum itself counted as spaces.  Each file's data follows its header,
 * padded with zeros to a multiple of 512; two zero blocks end the archive.
 * The writer pads no further (tar's 10240-byte records are for tapes): a
 * stream cut anywhere before its last byte is incomplete.  The reader
 * also takes what GNU tar writes for such files (magic "ustar  \0").
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "archive.h"
#include "error.h"
#include "fs.h"
#include "sys.h"
#include "internal.h"

#define BUF_SIZE (1u << 20)
#define TAIL_MAX (1u << 20)             /* zeros allowed after the end marker */
#define WORKER_JOB (4 << 20)            /* bytes of tar per zstd job */

/* Header fields: offset and width. */
#define H_NAME 0
#define H_MODE 100
#define H_UID 108
#define H_GID 116
#define H_SIZE 124
#define H_MTIME 136
#define H_CHKSUM 148
#define H_TYPE 156
#define H_MAGIC 257
#define H_UNAME 265
#define H_GNAME 297
#define H_DEVMAJOR 329
#define H_DEVMINOR 337
#define H_PREFIX 345

static const char POSIX_MAGIC[8] = { 'u', 's', 't', 'a', 'r', '\0', '0', '0' };
static const char GNU_MAGIC[8] = { 'u', 's', 't', 'a', 'r', ' ', ' ', '\0' };

static uint64_t padding(uint64_t size) {
    return (TK_ARC_BLOCK - size % TK_ARC_BLOCK) % TK_ARC_BLOCK;
}

uint64_t tk_arc_entry_bytes(uint64_t size) {
    return TK_ARC_BLOCK + size + padding(size);
}

/* NULL when name may be an entry's name, else why not. */
static const char *bad_name(const char *name, size_t len) {
    if (len == 0) return "an empty name";
    if (len > TK_ARC_NAME_MAX) return "a name longer than 99 bytes";
    if (memchr(name, '/', len)) return "a path (it holds '/'); only file names are allowed";
    if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
        return "a path ('.' or '..'); only file names are allowed";
    return NULL;
}

/* name made printable for a message: at most 64 bytes, others as '?'. */
static void shown(char *out, size_t cap, const char *name, size_t len) {
    size_t i, n = 0;
    for (i = 0; i < len && n + 4 < cap && i < 64; i++)
        out[n++] = (name[i] >= 0x20 && name[i] < 0x7f) ? name[i] : '?';
    if (i < len && n + 4 < cap) { memcpy(out + n, "...", 3); n += 3; }
    out[n] = '\0';
}

/* ------------------------------------------------------------------ */
/* Writing                                                              */
/* ------------------------------------------------------------------ */

struct tk_arc_writer {
    int fd;
    ZSTD_CCtx *z;               /* NULL: plain tar */
    unsigned char *buf;         /* tar bytes not passed on yet */
    size_t len;
    unsigned char *zout;        /* compressed bytes (zstd) */
    size_t zcap;
    uint64_t written;           /* bytes written to fd */
    int in_entry;
    uint64_t size, remain;      /* the current entry's size, and what it still needs */
    int writeback;              /* start the writeback of what is written */
    uint64_t wb_from;
    char *what;
};

static tk_code write_failed(tk_arc_writer *w, int e, tk_err *err) {
    return tk_fail_errno(err, e, "%s: write", w->what);
}

static tk_code zstd_failed(tk_arc_writer *w, size_t ret, tk_err *err) {
    if (ZSTD_getErrorCode(ret) == ZSTD_error_memory_allocation)
        return tk_fail(err, TK_NOMEM, "%s: zstd: out of memory", w->what);
    return tk_fail(err, TK_IO, "%s: zstd: %s", w->what, ZSTD_getErrorName(ret));
}

static tk_code write_out(tk_arc_writer *w, const void *p, size_t n, tk_err *err) {
    if (n && tk_write_all(w->fd, p, n) < 0) return write_failed(w, errno, err);
    w->written += n;
    if (w->writeback) tk_arc_writeback(w->fd, &w->wb_from, w->written, 0);
    return TK_OK;
}

/* Passes the buffered tar bytes on: to fd, or through zstd (end: and
 * closes the frame). */
static tk_code flush(tk_arc_writer *w, int end, tk_err *err) {
    ZSTD_inBuffer in = { w->buf, w->len, 0 };
    tk_code rc = TK_OK;
    if (!w->z) {
        rc = write_out(w, w->buf, w->len, err);
        w->len = 0;
        return rc;
    }
    for (;;) {
        ZSTD_outBuffer out = { w->zout, w->zcap, 0 };
        size_t ret = ZSTD_compressStream2(w->z, &out, &in, end ? ZSTD_e_end : ZSTD_e_continue);
        if (ZSTD_isError(ret)) return zstd_failed(w, ret, err);
        if ((rc = write_out(w, w->zout, out.pos, err)) != TK_OK) return rc;
        if (end ? ret == 0 : in.pos == in.size) break;
    }
    w->len = 0;
    return TK_OK;
}

static tk_code put(tk_arc_writer *w, const void *p, size_t n, tk_err *err) {
    const unsigned char *s = p;
    while (n > 0) {
        size_t k = BUF_SIZE - w->len;
        tk_code rc;
        if (k == 0) {
            if ((rc = flush(w, 0, err)) != TK_OK) return rc;
            continue;
        }
        if (k > n) k = n;
        memcpy(w->buf + w->len, s, k);
        w->len += k;
        s += k;
        n -= k;
    }
    return TK_OK;
}

static tk_code zeros(tk_arc_writer *w, uint64_t n, tk_err *err) {
    static const unsigned char zero[TK_ARC_BLOCK];
    while (n > 0) {
        size_t k = n < sizeof zero ? (size_t)n : sizeof zero;
        tk_code rc = put(w, zero, k, err);
        if (rc != TK_OK) return rc;
        n -= k;
    }
    return TK_OK;
}

/* Compression runs on zstd's own worker threads (two, or one on a single
 * CPU), while the caller's thread reads, checksums and writes: as
 * `tar | zstd` overlaps its two processes.  Jobs of WORKER_JOB bytes keep
 * its buffers to ~30 MiB at level 3 (its default, 4 windows, would take
 * ~60).  A libzstd built without threads compresses in the caller's
 * thread: the setting fails, and is ignored. */
static void zstd_workers(ZSTD_CCtx *z) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (!ZSTD_isError(ZSTD_CCtx_setParameter(z, ZSTD_c_nbWorkers, cpus >= 2 ? 2 : 1)))
        ZSTD_CCtx_setParameter(z, ZSTD_c_jobSize, WORKER_JOB);
}

static tk_code zstd_setup(tk_arc_writer *w, int level, uint64_t size, tk_err *err) {
    size_t ret;
    if (!(w->z = ZSTD_createCCtx()) || !(w->zout = tk_malloc(w->zcap = ZSTD_CStreamOutSize())))
        return tk_fail(err, TK_NOMEM, "%s: out of memory", w->what);
    ret = ZSTD_CCtx_setParameter(w->z, ZSTD_c_compressionLevel, level);
    if (!ZSTD_isError(ret)) ret = ZSTD_CCtx_setParameter(w->z, ZSTD_c_checksumFlag, 1);
    if (!ZSTD_isError(ret)) zstd_workers(w->z);
    if (!ZSTD_isError(ret) && size) ret = ZSTD_CCtx_setPledgedSrcSize(w->z, size);
    return ZSTD_isError(ret) ? zstd_failed(w, ret, err) : TK_OK;
}

/* A pipe (takhin snapshot export - | ssh ...) holds 64 KiB by default: each
 * 1 MiB write would wake the reader 16 times.  Ask for a pipe as large as
 * a write (Linux, F_SETPIPE_SZ; an unprivileged process gets up to
 * /proc/sys/fs/pipe-max-size, 1 MiB by default).  Best effort. */
static void grow_pipe(int fd) {
#ifdef F_SETPIPE_SZ
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode) && fcntl(fd, F_GETPIPE_SZ) < (int)BUF_SIZE)
        (void)fcntl(fd, F_SETPIPE_SZ, (int)BUF_SIZE);
#else
    (void)fd;
#endif
}

tk_code tk_arc_writer_open(int fd, int level, uint64_t size, const char *what,
                           tk_arc_writer **out, tk_err *err) {
    tk_arc_writer *w;
    tk_code rc = TK_OK;
    *out = NULL;
    if (level && (level < TK_ARC_LEVEL_MIN || level > TK_ARC_LEVEL_MAX))
        return tk_fail(err, TK_INVALID, "%s: zstd level %d is outside %d..%d", what, level,
                       TK_ARC_LEVEL_MIN, TK_ARC_LEVEL_MAX);
    if (!(w = tk_calloc(1, sizeof *w))) return tk_fail(err, TK_NOMEM, "%s: out of memory", what);
    grow_pipe(fd);
    w->fd = fd;
    w->what = tk_strdup(what);
    w->buf = tk_malloc(BUF_SIZE);
    if (!w->what || !w->buf) rc = tk_fail(err, TK_NOMEM, "%s: out of memory", what);
    if (rc == TK_OK && level) rc = zstd_setup(w, level, size, err);
    if (rc != TK_OK) {
        tk_arc_writer_free(w);
        return rc;
    }
    *out = w;
    return TK_OK;
}

static void octal(unsigned char *field, size_t width, uint64_t v) {
    char tmp[24];
    snprintf(tmp, sizeof tmp, "%0*" PRIo64, (int)width - 1, v);
    memcpy(field, tmp, width);                  /* width - 1 digits and the NUL */
}

tk_code tk_arc_add(tk_arc_writer *w, const char *name, uint64_t size, int64_t mtime,
                   tk_err *err) {
    unsigned char h[TK_ARC_BLOCK];
    size_t len = strlen(name);
    const char *why = bad_name(name, len);
    unsigned sum = 0;
    if (w->in_entry)
        return tk_fail(err, TK_INVALID, "%s: entry %s added inside another", w->what, name);
    if (why) return tk_fail(err, TK_INVALID, "%s: entry %s: %s", w->what, name, why);
    if (size > TK_ARC_SIZE_LIMIT)
        return tk_fail(err, TK_INVALID, "%s: %s has %" PRIu64 " bytes, more than a tar "
                       "header holds", w->what, name, size);
    memset(h, 0, sizeof h);
    memcpy(h + H_NAME, name, len);
    octal(h + H_MODE, 8, 0644);
    octal(h + H_UID, 8, 0);
    octal(h + H_GID, 8, 0);
    octal(h + H_SIZE, 12, size);
    octal(h + H_MTIME, 12, mtime > 0 && (uint64_t)mtime <= TK_ARC_SIZE_LIMIT ? (uint64_t)mtime : 0);
    h[H_TYPE] = '0';
    memcpy(h + H_MAGIC, POSIX_MAGIC, sizeof POSIX_MAGIC);
    octal(h + H_DEVMAJOR, 8, 0);
    octal(h + H_DEVMINOR, 8, 0);
    memset(h + H_CHKSUM, ' ', 8);
    for (size_t i = 0; i < sizeof h; i++) sum += h[i];
    octal(h + H_CHKSUM, 7, sum);                /* six digits, NUL, then the space */
    w->in_entry = 1;
    w->size = w->remain = size;
    return put(w, h, sizeof h, err);
}

tk_code tk_arc_write(tk_arc_writer *w, const void *buf, size_t len, tk_err *err) {
    if (!w->in_entry || len > w->remain)
        return tk_fail(err, TK_INVALID, "%s: more data than the entry's size", w->what);
    w->remain -= len;
    return put(w, buf, len, err);
}

tk_code tk_arc_space(tk_arc_writer *w, void **p, size_t *n, tk_err *err) {
    tk_code rc;
    if (!w->in_entry || w->remain == 0)
        return tk_fail(err, TK_INVALID, "%s: more data than the entry's size", w->what);
    if (w->len == BUF_SIZE && (rc = flush(w, 0, err)) != TK_OK) return rc;
    *p = w->buf + w->len;
    *n = BUF_SIZE - w->len;
    if (*n > w->remain) *n = (size_t)w->remain;
    return TK_OK;
}

void tk_arc_commit(tk_arc_writer *w, size_t n) {
    w->len += n;
    w->remain -= n;
}

tk_code tk_arc_end_entry(tk_arc_writer *w, tk_err *err) {
    if (!w->in_entry) return tk_fail(err, TK_INVALID, "%s: no entry to end", w->what);
    if (w->remain)
        return tk_fail(err, TK_INVALID, "%s: an entry ended %" PRIu64 " bytes short of its "
                       "size", w->what, w->remain);
    w->in_entry = 0;
    return zeros(w, padding(w->size), err);
}

tk_code tk_arc_finish(tk_arc_writer *w, tk_err *err) {
    tk_code rc;
    if (w->in_entry) return tk_fail(err, TK_INVALID, "%s: finished inside an entry", w->what);
    if ((rc = zeros(w, TK_ARC_END_BYTES, err)) != TK_OK) return rc;
    return flush(w, 1, err);
}

uint64_t tk_arc_written(const tk_arc_writer *w) { return w->written; }

void tk_arc_start_writeback(tk_arc_writer *w) { w->writeback = 1; }

void tk_arc_writeback(int fd, uint64_t *from, uint64_t to, int final) {
    if (to <= *from || (to - *from < TK_ARC_WRITEBACK && !final)) return;
    (void)tk_sync_file_range(fd, (off_t)*from, (off_t)(to - *from));
    *from = to;
}

void tk_arc_writer_free(tk_arc_writer *w) {
    if (!w) return;
    ZSTD_freeCCtx(w->z);
    free(w->zout);
    free(w->buf);
    free(w->what);
    free(w);
}

/* ------------------------------------------------------------------ */
/* Reading: the byte stream                                             */
/* ------------------------------------------------------------------ */

enum { MODE_UNKNOWN, MODE_PLAIN, MODE_ZSTD };

struct tk_arc_reader {
    tk_arc_read_fn fn;
    void *ud;
    char *what;
    int mode;
    ZSTD_DCtx *z;
    unsigned char *raw;         /* bytes from the source */
    size_t raw_pos, raw_len;
    int src_eof;
    size_t zret;                /* ZSTD_decompressStream's last answer: 0 at a frame's end */
    int zpending;               /* its last call filled the output: more may come */
    unsigned char *out;         /* decompressed bytes (zstd) */
    const unsigned char *buf;   /* the tar bytes: raw (plain) or out (zstd) */
    size_t pos, len;
    uint64_t consumed;
    /* The archive */
    unsigned entries;
    int in_entry, ended;
    uint64_t remain, pad;
    char name[80];              /* the current entry, printable */
};

static tk_code read_failed(tk_arc_reader *r, int e, tk_err *err) {
    return tk_fail_errno(err, e, "%s: read", r->what);
}

/* More bytes from the source into raw (which the caller emptied). */
static tk_code read_raw(tk_arc_reader *r, tk_err *err) {
    ssize_t n;
    do n = r->fn(r->ud, r->raw, BUF_SIZE);
    while (n < 0 && errno == EINTR);
    if (n < 0) return read_failed(r, errno, err);
    r->raw_pos = 0;
    r->raw_len = (size_t)n;
    r->src_eof = n == 0;
    r->consumed += (uint64_t)n;
    return TK_OK;
}

static int zstd_magic(const unsigned char *p) {
    uint32_t m = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return m == 0xFD2FB528u || (m & 0xFFFFFFF0u) == 0x184D2A50u;     /* a frame, a skippable frame */
}

/* The first bytes say what the stream is. */
static tk_code detect(tk_arc_reader *r, tk_err *err) {
    size_t ret;
    while (r->raw_len < 4 && !r->src_eof) {
        ssize_t n = r->fn(r->ud, r->raw + r->raw_len, BUF_SIZE - r->raw_len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return read_failed(r, errno, err);
        r->src_eof = n == 0;
        r->raw_len += (size_t)n;
        r->consumed += (uint64_t)n;
    }
    if (r->raw_len < 4 || !zstd_magic(r->raw)) {
        r->mode = MODE_PLAIN;
        r->buf = r->raw;
        r->len = r->raw_len;
        r->raw_len = 0;
        return TK_OK;
    }
    r->mode = MODE_ZSTD;
    r->zret = 1;
    if (!(r->z = ZSTD_createDCtx()) || !(r->out = tk_malloc(BUF_SIZE)))
        return tk_fail(err, TK_NOMEM, "%s: out of memory", r->what);
    r->buf = r->out;
    ret = ZSTD_DCtx_setParameter(r->z, ZSTD_d_windowLogMax, TK_ARC_WINDOW_LOG);
    if (ZSTD_isError(ret))
        return tk_fail(err, TK_IO, "%s: zstd: %s", r->what, ZSTD_getErrorName(ret));
    return TK_OK;
}

static tk_code zstd_error(tk_arc_reader *r, size_t ret, tk_err *err) {
    switch (ZSTD_getErrorCode(ret)) {
    case ZSTD_error_memory_allocation:
        return tk_fail(err, TK_NOMEM, "%s: zstd: out of memory", r->what);
    case ZSTD_error_frameParameter_windowTooLarge:
        return tk_fail(err, TK_INVALID, "%s: the zstd frame needs a window above %u MiB "
                       "(decompress it with zstd -d first)", r->what,
                       1u << (TK_ARC_WINDOW_LOG - 20));
    default:
        return tk_fail(err, TK_CORRUPT, "%s: not a valid zstd stream after %" PRIu64
                       " bytes: %s", r->what, r->consumed, ZSTD_getErrorName(ret));
    }
}

/* Decompresses until some bytes come out, or the stream ends (*eof).
 * zstd is called with no new input only when its last call filled the
 * output buffer (more may be pending): called again at a frame's end, it
 * would start waiting for the next frame and no longer say the last one
 * was complete. */
static tk_code fill_zstd(tk_arc_reader *r, int *eof, tk_err *err) {
    for (;;) {
        ZSTD_inBuffer in = { r->raw, r->raw_len, r->raw_pos };
        ZSTD_outBuffer out = { r->out, BUF_SIZE, 0 };
        size_t ret;
        tk_code rc;
        if (r->raw_pos == r->raw_len && !r->zpending) {
            if (r->src_eof) {
                if (r->zret != 0)
                    return tk_fail(err, TK_CORRUPT, "%s: the zstd stream is truncated (it ends "
                                   "inside a frame after %" PRIu64 " bytes)", r->what, r->consumed);
                *eof = 1;
                return TK_OK;
            }
            if ((rc = read_raw(r, err)) != TK_OK) return rc;
            continue;
        }
        ret = ZSTD_decompressStream(r->z, &out, &in);
        r->raw_pos = in.pos;
        if (ZSTD_isError(ret)) return zstd_error(r, ret, err);
        r->zret = ret;
        r->zpending = out.pos == out.size;
        if (out.pos > 0) {
            r->pos = 0;
            r->len = out.pos;
            return TK_OK;
        }
    }
}

/* Makes more tar bytes available in buf[pos..len), or says *eof. */
static tk_code fill(tk_arc_reader *r, int *eof, tk_err *err) {
    tk_code rc;
    *eof = 0;
    if (r->mode == MODE_UNKNOWN) {
        if ((rc = detect(r, err)) != TK_OK) return rc;
        if (r->mode == MODE_PLAIN && r->len > 0) return TK_OK;
    }
    if (r->mode == MODE_ZSTD) return fill_zstd(r, eof, err);
    if (r->src_eof) { *eof = 1; return TK_OK; }
    if ((rc = read_raw(r, err)) != TK_OK) return rc;
    r->pos = 0;
    r->len = r->raw_len;
    r->raw_len = 0;
    *eof = r->len == 0;
    return TK_OK;
}

/* Exactly n bytes into dst, or fewer (*got) at the end of the stream. */
static tk_code take(tk_arc_reader *r, unsigned char *dst, size_t n, size_t *got, tk_err *err) {
    *got = 0;
    while (*got < n) {
        size_t k;
        if (r->pos == r->len) {
            int eof;
            tk_code rc = fill(r, &eof, err);
            if (rc != TK_OK) return rc;
            if (eof) return TK_OK;
        }
        k = r->len - r->pos;
        if (k > n - *got) k = n - *got;
        memcpy(dst + *got, r->buf + r->pos, k);
        r->pos += k;
        *got += k;
    }
    return TK_OK;
}

static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

tk_code tk_arc_reader_open(tk_arc_read_fn fn, void *ud, const char *what,
                           tk_arc_reader **out, tk_err *err) {
    tk_arc_reader *r;
    *out = NULL;
    if (!(r = tk_calloc(1, sizeof *r))) return tk_fail(err, TK_NOMEM, "%s: out of memory", what);
    r->fn = fn;
    r->ud = ud;
    r->what = tk_strdup(what);
    r->raw = tk_malloc(BUF_SIZE);
    if (!r->what || !r->raw) {
        tk_arc_reader_free(r);
        return tk_fail(err, TK_NOMEM, "%s: out of memory", what);
    }
    *out = r;
    return TK_OK;
}

int tk_arc_compressed(const tk_arc_reader *r) { return r->mode == MODE_ZSTD; }

uint64_t tk_arc_consumed(const tk_arc_reader *r) { return r->consumed; }

void tk_arc_reader_free(tk_arc_reader *r) {
    if (!r) return;
    ZSTD_freeDCtx(r->z);
    free(r->out);
    free(r->raw);
    free(r->what);
    free(r);
}

ssize_t tk_arc_read_fd(void *ud, void *buf, size_t cap) {
    return read(*(int *)ud, buf, cap);
}

/* ------------------------------------------------------------------ */
/* Reading: the archive                                                 */
/* ------------------------------------------------------------------ */

/* An octal field: optional leading spaces, digits, then NUL or spaces to
 * its end.  -1 when it is anything else (GNU's base-256 included). */
static int parse_octal(const unsigned char *f, size_t width, uint64_t *v) {
    size_t i = 0;
    int digits = 0;
    *v = 0;
    while (i < width && f[i] == ' ') i++;
    for (; i < width && f[i] >= '0' && f[i] <= '7'; i++, digits++) {
        if (*v > (UINT64_MAX >> 3)) return -1;
        *v = *v << 3 | (uint64_t)(f[i] - '0');
    }
    for (; i < width; i++)
        if (f[i] != ' ' && f[i] != '\0') return -1;
    return digits ? 0 : -1;
}

static int checksum_ok(const unsigned char *h) {
    uint64_t want;
    unsigned sum = 0;
    int ssum = 0;
    if (parse_octal(h + H_CHKSUM, 8, &want) < 0) return 0;
    for (size_t i = 0; i < TK_ARC_BLOCK; i++) {
        unsigned char c = (i >= H_CHKSUM && i < H_CHKSUM + 8) ? ' ' : h[i];
        sum += c;
        ssum += (signed char)c;                 /* some old tars summed signed bytes */
    }
    return want == sum || (int64_t)want == ssum;
}

static const char *type_name(unsigned char t) {
    switch (t) {
    case '1': return "a hard link";
    case '2': return "a symbolic link";
    case '3': return "a character device";
    case '4': return "a block device";
    case '5': return "a directory";
    case '6': return "a FIFO";
    case '7': return "a contiguous file";
    case 'x': case 'g': return "a pax extended header";
    case 'L': case 'K': return "a GNU long name";
    default: return NULL;
    }
}

static tk_code parse_header(tk_arc_reader *r, const unsigned char *h, tk_arc_entry *e,
                            tk_err *err) {
    const unsigned char *nul = memchr(h + H_NAME, 0, 100);
    size_t len = nul ? (size_t)(nul - h) : 100;
    const char *why, *type;
    int posix;
    unsigned idx = r->entries;
    shown(r->name, sizeof r->name, (const char *)h, len);
    if (!checksum_ok(h))
        return tk_fail(err, TK_CORRUPT, "%s: entry %u: bad tar header checksum (not a tar "
                       "archive, or a damaged one)", r->what, idx);
    posix = memcmp(h + H_MAGIC, POSIX_MAGIC, 8) == 0;
    if (!posix && memcmp(h + H_MAGIC, GNU_MAGIC, 8) != 0)
        return tk_fail(err, TK_CORRUPT, "%s: entry %u (\"%s\"): not a ustar header", r->what,
                       idx, r->name);
    if (h[H_TYPE] != '0' && h[H_TYPE] != '\0') {
        char other[32];
        if (!(type = type_name(h[H_TYPE]))) {
            snprintf(other, sizeof other, "an entry of type %u", (unsigned)h[H_TYPE]);
            type = other;
        }
        return tk_fail(err, TK_INVALID, "%s: entry %u (\"%s\") is %s; a takhin archive holds "
                       "regular files only", r->what, idx, r->name, type);
    }
    if (!nul) why = "a name without its terminating NUL";
    else if (posix && h[H_PREFIX]) why = "a path (the ustar prefix is set); only file names are allowed";
    else why = bad_name((const char *)h, len);
    if (why)
        return tk_fail(err, TK_INVALID, "%s: entry %u (\"%s\") has %s", r->what, idx, r->name, why);
    if (h[H_SIZE] & 0x80)
        return tk_fail(err, TK_INVALID, "%s: entry %u (\"%s\"): a base-256 size (8 GiB or "
                       "more); refused", r->what, idx, r->name);
    if (parse_octal(h + H_SIZE, 12, &e->size) < 0)
        return tk_fail(err, TK_CORRUPT, "%s: entry %u (\"%s\"): the size field is not a "
                       "number", r->what, idx, r->name);
    memcpy(e->name, h, len);
    e->name[len] = '\0';
    {
        uint64_t t;
        e->mtime = parse_octal(h + H_MTIME, 12, &t) == 0 && t <= INT64_MAX ? (int64_t)t : 0;
    }
    e->index = idx;
    return TK_OK;
}

/* After the two zero blocks: zeros (tar's record padding, 10 KiB with
 * tar's defaults) to the end, at most TAIL_MAX of them. */
static tk_code check_tail(tk_arc_reader *r, tk_err *err) {
    uint64_t seen = 0;
    for (;;) {
        int eof;
        tk_code rc;
        if (r->pos < r->len) {
            seen += r->len - r->pos;
            if (!all_zero(r->buf + r->pos, r->len - r->pos))
                return tk_fail(err, TK_CORRUPT, "%s: data after the end of the archive "
                               "(garbage, or two archives in one stream)", r->what);
            if (seen > TAIL_MAX)
                return tk_fail(err, TK_CORRUPT, "%s: more than %u KiB of zeros after the end of "
                               "the archive", r->what, TAIL_MAX >> 10);
            r->pos = r->len;
        }
        if ((rc = fill(r, &eof, err)) != TK_OK) return rc;
        if (eof) return TK_OK;
    }
}

static tk_code end_of_archive(tk_arc_reader *r, tk_err *err) {
    unsigned char blk[TK_ARC_BLOCK];
    size_t got;
    tk_code rc = take(r, blk, sizeof blk, &got, err);
    if (rc != TK_OK) return rc;
    if (got < sizeof blk)
        return tk_fail(err, TK_CORRUPT, "%s: truncated: the stream ends inside the "
                       "end-of-archive marker", r->what);
    if (!all_zero(blk, sizeof blk))
        return tk_fail(err, TK_CORRUPT, "%s: a zero block before entry %u: the archive "
                       "ends early, or is damaged", r->what, r->entries);
    if ((rc = check_tail(r, err)) != TK_OK) return rc;
    r->ended = 1;
    return TK_OK;
}

tk_code tk_arc_next(tk_arc_reader *r, tk_arc_entry *e, int *end, tk_err *err) {
    unsigned char h[TK_ARC_BLOCK];
    size_t got;
    tk_code rc;
    *end = 0;
    if (r->ended) { *end = 1; return TK_OK; }
    while (r->in_entry) {                       /* skip what the caller left */
        const void *p;
        size_t n;
        if ((rc = tk_arc_data(r, &p, &n, err)) != TK_OK) return rc;
    }
    if ((rc = take(r, h, sizeof h, &got, err)) != TK_OK) return rc;
    r->entries++;
    if (got == 0 && r->entries == 1)
        return tk_fail(err, TK_CORRUPT, "%s: the stream is empty", r->what);
    if (got < sizeof h)
        return tk_fail(err, TK_CORRUPT, "%s: truncated: the stream ends %s (after %" PRIu64
                       " bytes)", r->what, got ? "inside a tar header"
                       : "without the end-of-archive marker", r->consumed);
    if (all_zero(h, sizeof h)) {
        if (r->entries == 1)
            return tk_fail(err, TK_CORRUPT, "%s: an empty archive", r->what);
        if ((rc = end_of_archive(r, err)) != TK_OK) return rc;
        *end = 1;
        return TK_OK;
    }
    if ((rc = parse_header(r, h, e, err)) != TK_OK) return rc;
    r->in_entry = 1;
    r->remain = e->size;
    r->pad = padding(e->size);
    return TK_OK;
}

tk_code tk_arc_data(tk_arc_reader *r, const void **p, size_t *n, tk_err *err) {
    tk_code rc;
    *n = 0;
    *p = NULL;
    if (!r->in_entry) return TK_OK;
    if (r->remain == 0) {                       /* the padding, then the entry is done */
        unsigned char blk[TK_ARC_BLOCK];
        size_t got;
        if ((rc = take(r, blk, (size_t)r->pad, &got, err)) != TK_OK) return rc;
        if (got < r->pad)
            return tk_fail(err, TK_CORRUPT, "%s: truncated: the stream ends in the padding of "
                           "entry %u (\"%s\")", r->what, r->entries, r->name);
        if (!all_zero(blk, got))
            return tk_fail(err, TK_CORRUPT, "%s: entry %u (\"%s\") is padded with something "
                           "else than zeros", r->what, r->entries, r->name);
        r->in_entry = 0;
        return TK_OK;
    }
    if (r->pos == r->len) {
        int eof;
        if ((rc = fill(r, &eof, err)) != TK_OK) return rc;
        if (eof)
            return tk_fail(err, TK_CORRUPT, "%s: truncated: the stream ends inside entry %u "
                           "(\"%s\"), %" PRIu64 " bytes short", r->what, r->entries, r->name,
                           r->remain);
    }
    *n = r->len - r->pos;
    if (*n > r->remain) *n = (size_t)r->remain;
    *p = r->buf + r->pos;
    r->pos += *n;
    r->remain -= *n;
    return TK_OK;
}
