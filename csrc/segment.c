/*
 * segment.c -- reading, scanning, indexing and writing one segment.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fs.h"
#include "segment.h"
#include "sys.h"
#include "internal.h"


/* ------------------------------------------------------------------ */
/* Cursor                                                               */
/* ------------------------------------------------------------------ */

void tk_window_reset(tk_window *c) {
    c->seg = NULL;
    c->len = 0;
    c->at = 0;
}

void tk_window_free(tk_window *c) {
    free(c->buf);
    c->buf = NULL;
    c->cap = 0;
    tk_window_reset(c);
}

/* Makes bytes [pos, pos+need) of fd available and returns them.  NULL with
 * errno == 0 means they lie (partly) beyond end; NULL with errno set is a
 * read error. */
static const unsigned char *cursor_get(tk_window *c, const tk_segment *s, int fd,
                                       uint64_t pos, size_t need, uint64_t end) {
    size_t want;
    ssize_t n;
    if (c->seg == s && pos >= c->at && pos + need <= c->at + c->len)
        return c->buf + (pos - c->at);
    if (pos + need > end) { errno = 0; return NULL; }
    want = need > c->chunk ? need : c->chunk;
    if (want > end - pos) want = (size_t)(end - pos);
    if (want > c->cap) {
        unsigned char *b = tk_realloc(c->buf, want);
        if (!b) { errno = ENOMEM; return NULL; }
        c->buf = b;
        c->cap = want;
    }
    c->seg = NULL;
    n = tk_pread_full(fd, c->buf, want, pos);
    if (n < 0) return NULL;
    c->seg = s;
    c->at = pos;
    c->len = (size_t)n;
    if ((size_t)n < need) { errno = 0; return NULL; }
    return c->buf;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */
/* ------------------------------------------------------------------ */

static uint64_t next_serial(void) {
    static uint64_t serial;
    return __atomic_add_fetch(&serial, 1, __ATOMIC_RELAXED);
}

tk_segment *tk_seg_new(int64_t base, tk_fdcache *cache) {
    tk_segment *s = tk_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->base = s->next = s->held = base;
    s->cache = cache;
    s->max_ts = TK_TS_NONE;
    s->crc_known = 1;                   /* of nothing: 0 */
    s->icrc_known = 1;
    s->log_fd = s->idx_fd = s->tim_fd = -1;
    s->ws.max_ts = TK_TS_NONE;
    return s;
}

/* The fd cache counts every open .log descriptor. */
static void counted_open(tk_segment *s) {
    if (s->cache) __atomic_fetch_add(&s->cache->open, 1, __ATOMIC_RELAXED);
}

void tk_seg_close_fd(tk_segment *s) {
    if (s->log_fd < 0) return;
    close(s->log_fd);
    s->log_fd = -1;
    s->writable = 0;
    if (s->cache) __atomic_fetch_sub(&s->cache->open, 1, __ATOMIC_RELAXED);
}

void tk_seg_free(tk_segment *s) {
    if (!s) return;
    tk_seg_close_fd(s);
    if (s->idx_fd >= 0) close(s->idx_fd);
    if (s->tim_fd >= 0) close(s->tim_fd);
    tk_index_free(&s->ix);
    free(s);
}

tk_code tk_seg_fd(const char *dir, tk_segment *s, int *fd_out, tk_err *err) {
    char path[PATH_MAX];
    int fd = __atomic_load_n(&s->log_fd, __ATOMIC_ACQUIRE), expected = -1;
    if (s->cache)
        __atomic_store_n(&s->used, __atomic_add_fetch(&s->cache->tick, 1, __ATOMIC_RELAXED),
                         __ATOMIC_RELAXED);
    if (fd >= 0) { *fd_out = fd; return TK_OK; }
    if (tk_seg_path(path, sizeof path, dir, s->base, TK_EXT_LOG) < 0)
        return tk_fail_errno(err, errno, "open %s", dir);
    fd = tk_open(path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return tk_fail_errno(err, errno, "open %s", path);
    /* Several readers may race to open a sealed segment: one wins. */
    if (!__atomic_compare_exchange_n(&s->log_fd, &expected, fd, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        close(fd);
        fd = expected;
    } else {
        counted_open(s);
    }
    *fd_out = fd;
    return TK_OK;
}

/* ------------------------------------------------------------------ */
/* Loading and rebuilding the index                                     */
/* ------------------------------------------------------------------ */

/* Reads a whole small file; a missing file reads as empty. */
static tk_code slurp(const char *path, unsigned char **buf, size_t *len, tk_err *err) {
    struct stat st;
    ssize_t n;
    int fd = tk_open(path, O_RDONLY | O_CLOEXEC, 0);
    *buf = NULL;
    *len = 0;
    if (fd < 0) {
        if (errno == ENOENT) return TK_OK;
        return tk_fail_errno(err, errno, "open %s", path);
    }
    if (fstat(fd, &st) < 0) goto fail;
    if (st.st_size > 0) {
        *buf = tk_malloc((size_t)st.st_size);
        if (!*buf) { errno = ENOMEM; goto fail; }
        n = tk_pread_full(fd, *buf, (size_t)st.st_size, 0);
        if (n < 0) goto fail;
        *len = (size_t)n;
    }
    close(fd);
    return TK_OK;
fail:
    {
        int e = errno;
        close(fd);
        free(*buf);
        *buf = NULL;
        return tk_fail_errno(err, e, "read %s", path);
    }
}

tk_code tk_seg_load_index(const char *dir, tk_segment *s, uint64_t log_size,
                          int sealed, int *whole, tk_err *err) {
    char p_off[PATH_MAX], p_tim[PATH_MAX];
    unsigned char *off = NULL, *tim = NULL;
    size_t off_len, tim_len;
    tk_seal seal;
    tk_code rc;
    int r;

    if (tk_seg_path(p_off, sizeof p_off, dir, s->base, TK_EXT_INDEX) < 0 ||
        tk_seg_path(p_tim, sizeof p_tim, dir, s->base, TK_EXT_TIMEINDEX) < 0)
        return tk_fail_errno(err, errno, "open %s", dir);
    if ((rc = slurp(p_off, &off, &off_len, err)) != TK_OK) return rc;
    if ((rc = slurp(p_tim, &tim, &tim_len, err)) != TK_OK) { free(off); return rc; }
    r = tk_index_parse(&s->ix, off, off_len, tim, tim_len, log_size, sealed, &seal);
    s->idx_size = off_len;
    s->tim_size = tim_len;
    s->idx_crc = tk_crc32c(0, off, off_len);
    s->tim_crc = tk_crc32c(0, tim, tim_len);
    s->icrc_known = 1;
    free(off);
    free(tim);
    if (r < 0) return tk_fail(err, TK_NOMEM, "load %s: out of memory", p_off);
    *whole = r;
    s->idx_n = s->ix.n;
    s->crc_known = 0;
    if (r && sealed) {
        /* The records the .log holds end at held; below next only when
         * the segment after this one is missing. */
        int64_t held = log_size > 0 ? s->base + (int64_t)seal.last_rel + 1 : s->base;
        if (held > s->next) *whole = 0;
        if (log_size > 0 && seal.max_ts == TK_TS_NONE) *whole = 0;
        if (seal.log_size != log_size) *whole = 0;
        if (*whole) {
            s->max_ts = seal.max_ts;
            s->log_crc = seal.log_crc;
            s->crc_known = 1;
            s->held = held;
        }
    }
    return TK_OK;
}

static tk_code corrupt_at(tk_err *err, const char *dir, const tk_segment *s,
                          uint64_t pos, const char *what) {
    char path[PATH_MAX];
    if (tk_seg_path(path, sizeof path, dir, s->base, TK_EXT_LOG) < 0) path[0] = '\0';
    return tk_fail(err, TK_CORRUPT, "%s at byte %" PRIu64 " of %s", what, pos, path);
}

static tk_code read_failed(tk_err *err, const char *dir, const tk_segment *s, int e) {
    char path[PATH_MAX];
    if (tk_seg_path(path, sizeof path, dir, s->base, TK_EXT_LOG) < 0) path[0] = '\0';
    return tk_fail_errno(err, e, "read %s", path);
}

/* After damage at *pos, finds the next intact record: a sound header, an
 * offset in [*expect, limit) and a matching CRC.  Intact data after a
 * damaged record means damage inside the log, not a torn tail, and must
 * not be cut off or left unindexed.  Garbage passes all three checks only
 * by a 2^-32 accident on top of a plausible header. */
static int resync(tk_segment *s, tk_window *c, int fd, uint64_t *pos, int64_t *expect,
                  uint64_t end, int64_t limit) {
    for (uint64_t q = *pos + 1; q + TK_REC_HEADER <= end; q++) {
        tk_rec_hdr h;
        const unsigned char *p = cursor_get(c, s, fd, q, TK_REC_HEADER, end);
        if (!p) return 0;
        if (!tk_rec_decode_header(p, &h) || h.offset < *expect || h.offset >= limit) continue;
        if (q + tk_rec_total(&h) > end) continue;
        if (!(p = cursor_get(c, s, fd, q, (size_t)tk_rec_total(&h), end))) return 0;
        if (!tk_rec_crc_ok(p, &h)) continue;
        *pos = q;
        *expect = h.offset;
        return 1;
    }
    return 0;
}

tk_code tk_seg_scan(const char *dir, tk_segment *s, tk_window *c, uint64_t *pos,
                    int64_t *expect, tk_idxstate *st, uint32_t interval,
                    uint64_t end, int check_crc, tk_err *err) {
    /* Relative offsets are uint32: a segment never holds more records. */
    int64_t limit = s->base + (int64_t)UINT32_MAX;
    if (!check_crc && s->next < limit) limit = s->next;
    int fd;
    tk_code rc = tk_seg_fd(dir, s, &fd, err);
    if (rc != TK_OK) return rc;
    while (*pos < end && *expect < limit) {
        tk_rec_hdr h;
        const unsigned char *p = cursor_get(c, s, fd, *pos, TK_REC_HEADER, end);
        uint64_t total = 0;
        int ok;
        if (!p && errno) return read_failed(err, dir, s, errno);
        ok = p && tk_rec_decode_header(p, &h) && h.offset == *expect;
        if (ok) {
            total = tk_rec_total(&h);
            if (*pos + total > end) ok = 0;                 /* torn payload */
            else if (check_crc) {
                p = cursor_get(c, s, fd, *pos, (size_t)total, end);
                if (!p && errno) return read_failed(err, dir, s, errno);
                ok = p && tk_rec_crc_ok(p, &h);
            }
        }
        if (!ok) {
            /* A torn or garbage tail ends the segment; damage with intact
             * records after it is stepped over, and the next intact record
             * gets an index entry so that it stays reachable. */
            if (!resync(s, c, fd, pos, expect, end, limit)) break;
            st->since = interval;
            continue;
        }
        if (tk_idxstate_step(st, h.timestamp, total, interval) &&
            tk_index_push(&s->ix, (uint32_t)(*expect - s->base), (uint32_t)*pos,
                          st->max_ts) < 0)
            return tk_fail(err, TK_NOMEM, "index %s/%020" PRId64 ": out of memory", dir, s->base);
        *pos += total;
        (*expect)++;
    }
    return TK_OK;
}

tk_code tk_seg_ensure_crc(const char *dir, tk_segment *s, tk_err *err) {
    int fd;
    tk_code rc;
    if (s->crc_known) return TK_OK;
    if ((rc = tk_seg_fd(dir, s, &fd, err)) != TK_OK) return rc;
    if (tk_file_crc(fd, s->size, &s->log_crc) < 0) return read_failed(err, dir, s, errno);
    s->crc_known = 1;
    return TK_OK;
}

tk_code tk_seg_rebuild(const char *dir, tk_segment *s, uint32_t interval,
                       uint64_t end, int check_crc, tk_err *err) {
    tk_window c = { .chunk = 1 << 16 };
    tk_idxstate st = { 0, TK_TS_NONE };
    uint64_t pos = 0;
    int64_t expect = s->base;
    tk_code rc;
    tk_index_truncate(&s->ix, 0);
    rc = tk_seg_scan(dir, s, &c, &pos, &expect, &st, interval, end, check_crc, err);
    tk_window_free(&c);
    if (rc != TK_OK) return rc;
    s->max_ts = st.max_ts;
    s->ws = st;
    s->crc_known = 0;
    s->idx_n = s->ix.n;
    s->held = expect;
    return TK_OK;
}

tk_code tk_seg_load_index_tail(const char *dir, tk_segment *s, uint64_t n, tk_err *err) {
    char p_off[PATH_MAX], p_tim[PATH_MAX];
    unsigned char *off = NULL, *tim = NULL;
    size_t have = s->ix.n, want, len;
    int fo = -1, ft = -1;
    tk_code rc = TK_OK;
    if (n <= have) return TK_OK;
    want = (size_t)(n - have);
    if (tk_seg_path(p_off, sizeof p_off, dir, s->base, TK_EXT_INDEX) < 0 ||
        tk_seg_path(p_tim, sizeof p_tim, dir, s->base, TK_EXT_TIMEINDEX) < 0)
        return tk_fail_errno(err, errno, "open %s", dir);
    off = tk_malloc(want * TK_OIDX_ENTRY);
    tim = tk_malloc(want * TK_TIDX_ENTRY);
    if (!off || !tim) { rc = tk_fail(err, TK_NOMEM, "load %s: out of memory", p_off); goto out; }
    if ((fo = tk_open(p_off, O_RDONLY | O_CLOEXEC, 0)) < 0 ||
        (ft = tk_open(p_tim, O_RDONLY | O_CLOEXEC, 0)) < 0) {
        rc = tk_fail_errno(err, errno, "open %s", fo < 0 ? p_off : p_tim);
        goto out;
    }
    len = want;
    {
        ssize_t a = tk_pread_full(fo, off, want * TK_OIDX_ENTRY, have * TK_OIDX_ENTRY);
        ssize_t b = tk_pread_full(ft, tim, want * TK_TIDX_ENTRY, have * TK_TIDX_ENTRY);
        if (a < 0 || b < 0) { rc = tk_fail_errno(err, errno, "read %s", p_off); goto out; }
        if ((size_t)a / TK_OIDX_ENTRY < len) len = (size_t)a / TK_OIDX_ENTRY;
        if ((size_t)b / TK_TIDX_ENTRY < len) len = (size_t)b / TK_TIDX_ENTRY;
    }
    if (tk_index_append_parsed(&s->ix, off, tim, len, s->size) < 0)
        rc = tk_fail(err, TK_NOMEM, "load %s: out of memory", p_off);
out:
    if (fo >= 0) close(fo);
    if (ft >= 0) close(ft);
    free(off);
    free(tim);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Reading                                                              */
/* ------------------------------------------------------------------ */

/* Walks record headers from index entry k (the segment start for k < 0)
 * to offset.  On a header that does not check out, *bad is its position. */
static tk_code walk_from(const char *dir, tk_segment *s, tk_window *c, int fd, uint64_t pos,
                         int64_t at, int64_t offset, uint64_t end, uint64_t *pos_out,
                         uint64_t *bad, int64_t *bad_at, tk_err *err) {
    for (;;) {
        tk_rec_hdr h;
        const unsigned char *p = cursor_get(c, s, fd, pos, TK_REC_HEADER, end);
        if (!p && errno) return read_failed(err, dir, s, errno);
        if (!p || !tk_rec_decode_header(p, &h) || h.offset != at) {
            *bad = pos;
            *bad_at = at;
            return TK_CORRUPT;
        }
        if (at == offset) { *pos_out = pos; return TK_OK; }
        pos += tk_rec_total(&h);
        at++;
    }
}

static tk_code walk(const char *dir, tk_segment *s, tk_window *c, int fd, long k,
                    int64_t offset, uint64_t end, uint64_t *pos_out, uint64_t *bad,
                    int64_t *bad_at, tk_err *err) {
    return walk_from(dir, s, c, fd, k >= 0 ? s->ix.e[k].pos : 0,
                     k >= 0 ? s->base + s->ix.e[k].rel : s->base, offset, end, pos_out, bad,
                     bad_at, err);
}

/* Index entries are CRC-checked, so when the walk from the nearest one
 * fails, the record there is more likely damaged than the entry wrong.
 * Walking again from earlier entries tells them apart: failing at the same
 * place means damaged data (CORRUPT, nothing to repair); reaching the
 * offset means an entry lied (TK_STALE: rebuild the index and retry). */
tk_code tk_seg_locate(const char *dir, tk_segment *s, tk_window *c, int64_t offset,
                      uint64_t end, uint64_t *pos_out, tk_err *err) {
    long k = tk_index_floor_rel(&s->ix, (uint32_t)(offset - s->base));
    uint64_t bad = 0, first_bad = 0, q;
    int64_t bad_at = 0, first_at = 0;
    int fd;
    tk_code rc = tk_seg_fd(dir, s, &fd, err);
    if (rc != TK_OK) return rc;
    for (long kk = k;; kk--) {
        rc = walk(dir, s, c, fd, kk, offset, end, pos_out, &bad, &bad_at, err);
        if (rc == TK_OK) return kk == k ? TK_OK : TK_STALE;
        if (rc != TK_CORRUPT) return rc;
        if (kk == k) { first_bad = bad; first_at = bad_at; }
        if (kk < 0 || (kk < k && bad == first_bad)) break;
    }
    /* Damage on the way.  The record may still be intact behind it, as a
     * rebuild stepping over the damage would find it: then the index only
     * lacks an entry there (TK_STALE: rebuild and retry). */
    q = first_bad;
    bad_at = first_at;
    while (bad_at < offset && resync(s, c, fd, &q, &bad_at, end, offset + 1)) {
        rc = walk_from(dir, s, c, fd, q, bad_at, offset, end, pos_out, &q, &bad_at, err);
        if (rc == TK_OK) return TK_STALE;
        if (rc != TK_CORRUPT) return rc;
    }
    return corrupt_at(err, dir, s, first_bad, "damaged record header");
}

tk_code tk_seg_read_at(const char *dir, tk_segment *s, tk_window *c, uint64_t pos,
                       int64_t expect, uint64_t end, tk_rec_hdr *h,
                       const unsigned char **rec, tk_err *err) {
    const unsigned char *p;
    int fd;
    tk_code rc = tk_seg_fd(dir, s, &fd, err);
    if (rc != TK_OK) return rc;
    p = cursor_get(c, s, fd, pos, TK_REC_HEADER, end);
    if (!p && errno) return read_failed(err, dir, s, errno);
    if (!p || !tk_rec_decode_header(p, h) || h->offset != expect)
        return corrupt_at(err, dir, s, pos, "damaged record header");
    p = cursor_get(c, s, fd, pos, (size_t)tk_rec_total(h), end);
    if (!p && errno) return read_failed(err, dir, s, errno);
    if (!p) return corrupt_at(err, dir, s, pos, "truncated record");
    if (!tk_rec_crc_ok(p, h)) return corrupt_at(err, dir, s, pos, "checksum mismatch");
    *rec = p;
    return TK_OK;
}

tk_code tk_seg_find_time(const char *dir, tk_segment *s, tk_window *c, int64_t ts,
                         int64_t from, uint64_t end, int64_t *offset, tk_err *err) {
    /* Entry k says: no record up to offset base+rel_k is newer than
     * max_ts_k.  So start after the last entry whose max_ts < ts. */
    long k = tk_index_floor_ts_below(&s->ix, ts);
    uint64_t pos = k >= 0 ? s->ix.e[k].pos : 0;
    int64_t at = k >= 0 ? s->base + s->ix.e[k].rel : s->base;
    while (at < s->next) {
        tk_rec_hdr h;
        const unsigned char *p;
        tk_code rc = tk_seg_read_at(dir, s, c, pos, at, end, &h, &p, err);
        if (rc == TK_CORRUPT && k >= 0 && pos == s->ix.e[k].pos) {
            /* Damaged record, or an entry that lies?  locate tells. */
            uint64_t where;
            tk_code lrc = tk_seg_locate(dir, s, c, at, end, &where, NULL);
            if (lrc == TK_STALE || (lrc == TK_OK && where != pos)) return TK_STALE;
        }
        if (rc != TK_OK) return rc;
        /* The entry's own record cannot be newer than the entry claims. */
        if (k >= 0 && pos == s->ix.e[k].pos && h.timestamp > s->ix.e[k].max_ts) return TK_STALE;
        if (h.timestamp >= ts && at >= from) { *offset = at; return TK_OK; }
        pos += tk_rec_total(&h);
        at++;
    }
    *offset = s->next;
    return TK_OK;
}

/* ------------------------------------------------------------------ */
/* Writing                                                              */
/* ------------------------------------------------------------------ */

static int open_at(const char *dir, int64_t base, tk_ext ext, int flags,
                   char *path, size_t cap) {
    if (tk_seg_path(path, cap, dir, base, ext) < 0) return -1;
    return tk_open(path, flags | O_CLOEXEC, 0644);
}

tk_code tk_seg_open_index_fds(const char *dir, tk_segment *s, tk_err *err) {
    char path[PATH_MAX];
    int fd;
    if (s->idx_fd < 0) {
        fd = open_at(dir, s->base, TK_EXT_INDEX, O_RDWR | O_CREAT, path, sizeof path);
        if (fd < 0) return tk_fail_errno(err, errno, "open %s", path);
        s->idx_fd = fd;
    }
    if (s->tim_fd < 0) {
        fd = open_at(dir, s->base, TK_EXT_TIMEINDEX, O_RDWR | O_CREAT, path, sizeof path);
        if (fd < 0) return tk_fail_errno(err, errno, "open %s", path);
        s->tim_fd = fd;
    }
    return TK_OK;
}

tk_code tk_seg_open_writable(const char *dir, tk_segment *s, tk_err *err) {
    char path[PATH_MAX];
    if (!s->writable) {
        int fd = open_at(dir, s->base, TK_EXT_LOG, O_RDWR, path, sizeof path);
        if (fd < 0) return tk_fail_errno(err, errno, "open %s", path);
        tk_seg_close_fd(s);
        s->log_fd = fd;
        s->writable = 1;
        s->serial = next_serial();
        counted_open(s);
    }
    return tk_seg_open_index_fds(dir, s, err);
}

tk_code tk_seg_create(const char *dir, int64_t base, int durable, tk_fdcache *cache,
                      tk_segment **out, tk_err *err) {
    static const tk_ext order[3] = { TK_EXT_INDEX, TK_EXT_TIMEINDEX, TK_EXT_LOG };
    char path[PATH_MAX];
    tk_segment *s = tk_seg_new(base, cache);
    tk_code rc;
    if (!s) return tk_fail(err, TK_NOMEM, "create segment %s/%020" PRId64 ": out of memory", dir, base);
    /* The .log comes last: a segment exists once its .log does. */
    for (int i = 0; i < 3; i++) {
        int fd = open_at(dir, base, order[i], O_RDWR | O_CREAT | O_TRUNC, path, sizeof path);
        if (fd < 0) {
            rc = tk_fail_errno(err, errno, "create %s", path);
            tk_seg_free(s);
            return rc;
        }
        close(fd);
    }
    if (durable && tk_fsync_dir(dir) < 0) {
        rc = tk_fail_errno(err, errno, "fsync %s", dir);
        tk_seg_free(s);
        return rc;
    }
    if ((rc = tk_seg_open_writable(dir, s, err)) != TK_OK) {
        tk_seg_free(s);
        return rc;
    }
    *out = s;
    return TK_OK;
}

/* Replaces the file behind *fd by a private copy of its first len bytes
 * when it has other hard links.  Once the copy has taken the name, *fd
 * refers to the copy whatever happens next: a descriptor left on the old
 * inode would write into the other link's file. */
static tk_code unshare_file(const char *dir, int64_t base, tk_ext ext, int *fd,
                            uint64_t len, int durable, tk_err *err) {
    char path[PATH_MAX], tmp[PATH_MAX];
    int nfd, e;
    long links = tk_link_count(*fd);
    if (tk_seg_path(path, sizeof path, dir, base, ext) < 0 ||
        snprintf(tmp, sizeof tmp, "%s/.%020" PRId64 "%s" TK_TMP_SUFFIX, dir, base,
                 tk_ext_name[ext]) >= (int)sizeof tmp)
        return tk_fail_errno(err, ENAMETOOLONG, "copy %s", dir);
    if (links < 0) return tk_fail_errno(err, errno, "stat %s", path);
    if (links <= 1) return TK_OK;
    unlink(tmp);
    nfd = tk_open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (nfd < 0) return tk_fail_errno(err, errno, "create %s", tmp);
    if (tk_copy_range(*fd, nfd, len) < 0 || (durable && tk_fsync(nfd) < 0) ||
        tk_rename(tmp, path) < 0) {
        e = errno;
        close(nfd);
        unlink(tmp);
        return tk_fail_errno(err, e, "copy %s to %s", path, tmp);
    }
    close(*fd);
    *fd = nfd;
    if (durable && tk_fsync_dir(dir) < 0) return tk_fail_errno(err, errno, "fsync %s", dir);
    return TK_OK;
}

tk_code tk_seg_unshare(const char *dir, tk_segment *s, unsigned which, int durable,
                       tk_err *err) {
    tk_code rc = TK_OK;
    if ((which & (1u << TK_EXT_LOG)) && s->log_fd >= 0) {
        int before = s->log_fd;
        rc = unshare_file(dir, s->base, TK_EXT_LOG, &s->log_fd, s->size, durable, err);
        if (s->log_fd != before) s->serial = next_serial();     /* a new inode */
    }
    if (rc == TK_OK && (which & (1u << TK_EXT_INDEX)) && s->idx_fd >= 0)
        rc = unshare_file(dir, s->base, TK_EXT_INDEX, &s->idx_fd,
                          s->idx_n * TK_OIDX_ENTRY, durable, err);
    if (rc == TK_OK && (which & (1u << TK_EXT_TIMEINDEX)) && s->tim_fd >= 0)
        rc = unshare_file(dir, s->base, TK_EXT_TIMEINDEX, &s->tim_fd,
                          s->idx_n * TK_TIDX_ENTRY, durable, err);
    return rc;
}

/* Replaces an index file atomically.  The descriptor, if open, is closed:
 * it refers to the old inode, and the writer reopens the name when it
 * next writes an entry. */
static tk_code replace_index_file(const char *dir, int64_t base, tk_ext ext,
                                  const unsigned char *buf, size_t len, int *fd,
                                  int durable, tk_err *err) {
    char path[PATH_MAX];
    if (tk_seg_path(path, sizeof path, dir, base, ext) < 0 ||
        tk_replace_file(path, buf, len, durable) < 0)
        return tk_fail_errno(err, errno, "write %s", path);
    if (fd && *fd >= 0) {
        close(*fd);
        *fd = -1;
    }
    return TK_OK;
}

static void make_seal(const tk_segment *s, tk_seal *seal) {
    seal->max_ts = s->max_ts;
    /* held, not next: when the following segment is missing, next is its
     * base while this .log ends earlier, and the trailer must not claim
     * offsets this segment does not hold. */
    seal->last_rel = s->held > s->base ? (uint32_t)(s->held - 1 - s->base) : 0;
    seal->log_size = (uint32_t)s->size;
    seal->log_crc = s->log_crc;
}

tk_code tk_seg_write_index(const char *dir, tk_segment *s, int sealed, int durable,
                           tk_err *err) {
    size_t n = s->ix.n, tlen = n * TK_TIDX_ENTRY + (sealed ? TK_SEAL_SIZE : 0);
    unsigned char *off, *tim;
    tk_code rc;
    if (sealed && (rc = tk_seg_ensure_crc(dir, s, err)) != TK_OK) return rc;
    off = tk_malloc(n * TK_OIDX_ENTRY + 1);
    tim = tk_malloc(tlen + 1);
    if (!off || !tim) {
        free(off); free(tim);
        return tk_fail(err, TK_NOMEM, "index %s/%020" PRId64 ": out of memory", dir, s->base);
    }
    tk_index_encode_off(&s->ix, 0, n, off);
    tk_index_encode_time(&s->ix, 0, n, tim);
    if (sealed) {
        tk_seal seal;
        make_seal(s, &seal);
        tk_index_encode_seal(tim + n * TK_TIDX_ENTRY, &seal);
    }
    s->icrc_known = 0;
    rc = replace_index_file(dir, s->base, TK_EXT_INDEX, off, n * TK_OIDX_ENTRY,
                            &s->idx_fd, durable, err);
    if (rc == TK_OK)
        rc = replace_index_file(dir, s->base, TK_EXT_TIMEINDEX, tim, tlen, &s->tim_fd,
                                durable, err);
    if (rc == TK_OK) s->idx_n = n;
    if (rc == TK_OK && s->idx_fd < 0 && s->writable)
        rc = tk_seg_open_index_fds(dir, s, err);
    if (rc == TK_OK) {
        s->idx_size = n * TK_OIDX_ENTRY;
        s->tim_size = tlen;
        s->idx_crc = tk_crc32c(0, off, n * TK_OIDX_ENTRY);
        s->tim_crc = tk_crc32c(0, tim, tlen);
        s->icrc_known = 1;
    }
    free(off);
    free(tim);
    return rc;
}

tk_code tk_seg_seal(const char *dir, tk_segment *s, int durable, tk_err *err) {
    unsigned char buf[TK_SEAL_SIZE];
    char path[PATH_MAX];
    tk_seal seal;
    tk_code rc = tk_seg_ensure_crc(dir, s, err);
    if (rc != TK_OK) return rc;
    make_seal(s, &seal);
    tk_index_encode_seal(buf, &seal);
    if (tk_pwrite_all(s->tim_fd, buf, sizeof buf, s->idx_n * TK_TIDX_ENTRY) < 0) {
        int e = errno;
        tk_seg_path(path, sizeof path, dir, s->base, TK_EXT_TIMEINDEX);
        return tk_fail_errno(err, e, "write %s", path);
    }
    if (s->icrc_known && s->tim_size == s->idx_n * TK_TIDX_ENTRY) {
        s->tim_crc = tk_crc32c(s->tim_crc, buf, sizeof buf);
        s->tim_size += sizeof buf;
    } else {
        s->icrc_known = 0;
    }
    if (durable) {
        rc = tk_seg_sync(dir, s, err);
        if (rc != TK_OK) return rc;
    }
    close(s->idx_fd);
    close(s->tim_fd);
    s->idx_fd = s->tim_fd = -1;
    return TK_OK;
}

tk_code tk_seg_sync(const char *dir, tk_segment *s, tk_err *err) {
    int fds[TK_EXT_COUNT] = { s->log_fd, s->idx_fd, s->tim_fd };
    char path[PATH_MAX];
    for (int i = 0; i < TK_EXT_COUNT; i++) {
        int fd = fds[i], own = 0;
        if (fd < 0) {
            if (tk_seg_path(path, sizeof path, dir, s->base, (tk_ext)i) < 0) continue;
            fd = tk_open(path, O_RDONLY | O_CLOEXEC, 0);
            if (fd < 0) continue;                   /* derived files may be absent */
            own = 1;
        }
        if (tk_fdatasync(fd) < 0) {
            int e = errno;
            if (own) close(fd);
            tk_seg_path(path, sizeof path, dir, s->base, (tk_ext)i);
            return tk_fail_errno(err, e, "fsync %s", path);
        }
        if (own) close(fd);
    }
    s->dirty = 0;
    return TK_OK;
}
