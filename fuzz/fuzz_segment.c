/*
 * fuzz_segment.c -- opening (recovering) and reading arbitrary segment bytes.
 *
 * The input becomes one log directory: an active segment 00000000000000000000
 * or, with bit 0 of the flags, a sealed segment 0 and an active segment N.
 * Each run opens it read-only, then as a writer (the recovery path), then
 * read-only again beside the writer, then as a writer once more, and on every
 * handle reads a range of offsets (newest first, then again oldest first),
 * iterates, and asks offset_for_time.  Last, a third writer appends a record
 * and a fourth must read it back.
 *
 * Input layout (short inputs read as zeros past their end):
 *   [0]     flags
 *           bit 0    two segments: 0 (sealed) and N (active)
 *           bits 1-2 index files of the active segment: 0 absent,
 *                    1 raw input bytes, 2 raw input bytes whose entry (and
 *                    trailer) CRCs the harness fixes, 3 derived: what a
 *                    writer would have written for the accepted records
 *           bits 3-4 the same for the sealed segment
 *           bit 5    fix record CRCs: walk each .log by its length fields
 *                    and store the right CRC32C (see [2])
 *           bit 6    fix record offsets (record i gets base + i) first
 *           bit 7    the later writers (w2, w3, w4) open in shared mode
 *   [1]     low nibble: index_interval_bytes to open with; high nibble: the
 *           interval of derived index files (table `intervals`)
 *   [2]     record i keeps its CRC when bit (i % 8) is set (with bit 5)
 *   [3..10] N, u64 little-endian, masked to 63 bits (0 reads as 1); N above
 *           INT64_MAX - 2^33 names no segment: its files are written but
 *           must be ignored (and left alone), and segment 0 is active
 *   then chunks, each u16 length + bytes: .log, .index, .timeindex of
 *   segment 0, then of segment N.  Index chunks are used by modes 1 and 2;
 *   in mode 3 the .index chunk is a list of damage, 3 bytes each (u16
 *   position modulo the .log's size, XOR byte), applied to the .log after
 *   the index files were derived: bit rot under an honest index.
 *
 * Checks (abort on failure):
 *   - every record a read or an iterator returns has the requested offset
 *     and, framed again (tk_rec_encode computes a fresh CRC), occurs byte for
 *     byte in the .log the harness wrote: recovery and reads never hand out
 *     a record whose stored CRC does not match its bytes;
 *   - the writer never modifies a sealed .log, leaves the active .log a
 *     prefix of what was written, and its size is the size it reports;
 *   - the first read-only handle and the first writer agree on everything;
 *   - when the index files are absent or derived (modes 0 and 3) and the
 *     .log was not damaged afterwards, results are exact (docs/FORMAT.md,
 *     "Recovery"; ref_scan is the model): a scan takes records one by one;
 *     at an incomplete or invalid one (unsound header, unexpected offset,
 *     past the end, or -- in the active segment's CRC-checking scan -- a CRC
 *     mismatch) it searches byte by byte for the next intact record (sound
 *     header, offset >= expected and < limit, complete, CRC matching) and
 *     goes on there, else stops.  The active segment ends after the last
 *     accepted record, the .log is cut exactly there, and its high water
 *     mark is one past that record's offset; accepted records read back;
 *     offsets in holes read CORRUPT (unless the header walk of a read
 *     reaches an intact record there: model_read); in the sealed segment
 *     (scanned like the index rebuild: no CRC checks, limit N) an accepted
 *     record reads back iff its CRC matches, anything else is CORRUPT;
 *     offset_for_time is the first offset with timestamp >= t when there is
 *     no hole; and all four handles agree;
 *   - with honest index files (modes 0 and 3, damaged or not) reads are
 *     stable: a second pass over the offsets gives what the first gave, and
 *     the writer's reopen (and a reader opened beside the first writer)
 *     report the same high water mark and reads as the first writer: what
 *     a writer has served is not lost by reopening;
 *   - a record appended after recovery reads back after a reopen.
 * With raw index files (modes 1, 2) entries may carry valid CRCs and still
 * lie (the fuzzer copies records around); the engine trusts such entries by
 * design, so only the first three checks and the last apply there.
 *
 * Known engine findings (fuzz/README.md) are stepped around unless the
 * environment sets FUZZ_NO_KNOWN: 1 (timestamps INT64_MIN), 5 (an
 * iterator does not step over garbage before a resynced record), 6 (a
 * resync to an offset >= base + 2^32: the input is skipped).  Findings 2,
 * 3 and 4 are fixed and checked.  FUZZ_DEBUG prints the model's records.
 */
#include "common.c"

#include "takhin.h"
#include "record.h"

#define MAX_PROBES  1024
#define MAX_TIMES   64
#define MAX_ITER    512
#define SPAN        400         /* offsets probed per segment */

static const uint32_t intervals[16] = { 1, 2, 7, 34, 64, 100, 256, 4096,
                                        3, 50, 128, 512, 1000, 10, 20, 40 };

typedef struct refrec {
    uint64_t pos;
    uint64_t total;
    int64_t off;
    int64_t ts;
    int crc_ok;
    int forced;             /* found by a resync: the scan gives it an index entry */
} refrec;

typedef struct seg {
    int64_t base;
    int sealed, mode;
    int damaged;            /* mode 3: the .log was damaged after deriving */
    fz_buf log, idx, tim, dmg;
    /* the reference scan of log (ref_scan): the accepted records, in order,
     * with strictly increasing offsets */
    refrec *r;
    size_t rcap;
    size_t nrec;
    size_t resyncs;         /* records found by a resync */
    int64_t next_off;       /* the expected offset when the scan stopped */
    uint64_t end;           /* where it stopped: byte after the last accepted record */
} seg;

typedef struct result {
    int64_t hwm, base;
    size_t nsegs;
    tk_code rc[MAX_PROBES];
    uint32_t fcrc[MAX_PROBES], flen[MAX_PROBES];
    tk_code rc2[MAX_PROBES];        /* the second pass */
    uint32_t fcrc2[MAX_PROBES];
    tk_code trc[MAX_TIMES];
    int64_t toff[MAX_TIMES];
    size_t nit;
    int64_t ioff[MAX_ITER];
    tk_code irc[MAX_ITER];
    uint32_t icrc[MAX_ITER];
} result;

static struct {
    seg s[2];               /* s[0]: segment 0; s[1]: segment N (two only) */
    int two;
    int64_t n;
    int64_t probes[MAX_PROBES];
    size_t nprobes;
    int64_t times[MAX_TIMES];
    size_t ntimes;
    int strict_active, strict_sealed, strict_time;
    int honest;             /* no index file of the run lies (modes 0 and 3) */
    int ignored;            /* N is too large to name a segment: the log has segment 0 only */
    int known_rebuild;      /* finding 7 */
    int known_ts_none;      /* a segment whose records all have timestamp INT64_MIN */
    int shared;             /* w2, w3, w4 are shared-mode writers */
    fz_buf frame;
    char dir[PATH_MAX];
} g;

static seg *active_seg(void) { return &g.s[g.two ? 1 : 0]; }

/* ------------------------------------------------------------------ */
/* Building the files                                                   */
/* ------------------------------------------------------------------ */

/* Walks the .log by its length fields and fixes offsets and/or CRCs. */
static void fix_records(seg *s, int fix_off, int fix_crc, unsigned keep_mask) {
    unsigned char *b = s->log.p;
    size_t len = s->log.len, pos = 0;
    for (uint64_t i = 0; len - pos >= TK_REC_HEADER; i++) {
        uint32_t length = fz_ld32(b + pos);
        if (length < TK_REC_LEN_BASE || length > len - pos - 4) break;
        if (fix_off) fz_st64(b + pos + 10, (uint64_t)s->base + i);
        if (fix_crc && !(keep_mask >> (i % 8) & 1))
            fz_st32(b + pos + 4, tk_crc32c(0, b + pos + 8, length - 4));
        pos += 4 + (size_t)length;
    }
}

/* The record at byte q of s->log if it is intact enough: a sound header
 * (magic, attributes, lengths that agree, at most 1 GiB, offset >= 0), an
 * offset in [lo, hi), complete within the .log and, when `crc`, a matching
 * CRC.  Independent of the engine (record.h describes the format). */
static int rec_at(const seg *s, uint64_t q, int64_t lo, int64_t hi, int crc, refrec *out) {
    size_t len = s->log.len;
    const unsigned char *p = s->log.p + q;
    uint32_t length, klen, vlen;
    int64_t off;
    int ok;
    if (q > len || len - q < TK_REC_HEADER) return 0;
    length = fz_ld32(p);
    klen = fz_ld32(p + 26);
    vlen = fz_ld32(p + 30);
    off = (int64_t)fz_ld64(p + 10);
    if (p[8] != 1 || (p[9] & ~1u) || length < 30 || length > (1u << 30)) return 0;
    if (30ull + klen + vlen != length || (!(p[9] & 1) && klen)) return 0;
    if (off < 0 || off < lo || off >= hi) return 0;
    if ((uint64_t)length + 4 > len - q) return 0;
    ok = tk_crc32c(0, p + 8, length - 4) == fz_ld32(p + 4);
    if (crc && !ok) return 0;
    *out = (refrec){ q, 4 + (uint64_t)length, off, (int64_t)fz_ld64(p + 18), ok, 0 };
    return 1;
}

/* The records a scan accepts, by docs/FORMAT.md ("Recovery"), independently
 * of the engine.  Record by record from byte 0 and offset base: a record
 * with a sound header and the expected offset, complete, and (check_crc) with
 * a matching CRC is accepted.  Otherwise the scan looks byte by byte from the
 * next byte on for an intact record: sound header, offset in [expected,
 * limit), complete, CRC matching.  Found: the scan goes on there (a hole, or
 * garbage stepped over); not found: it stops (a torn or garbage tail).
 * The active segment's recovery checks CRCs with limit INT64_MAX; a sealed
 * segment's index rebuild walks headers only, with limit = its next offset. */
static void ref_scan(seg *s, int check_crc, int64_t limit) {
    uint64_t pos = 0;
    int64_t expect = s->base;
    s->nrec = s->resyncs = 0;
    /* Relative offsets are uint32: no segment holds a record beyond that. */
    if (s->base <= INT64_MAX - (int64_t)UINT32_MAX && limit > s->base + (int64_t)UINT32_MAX)
        limit = s->base + (int64_t)UINT32_MAX;
    while (pos < s->log.len && expect < limit) {
        refrec rr;
        if (!rec_at(s, pos, expect, expect + 1, check_crc, &rr)) {
            uint64_t q = pos + 1;
            while (q + TK_REC_HEADER <= s->log.len && !rec_at(s, q, expect, limit, 1, &rr)) q++;
            if (q + TK_REC_HEADER > s->log.len) break;
            rr.forced = 1;
            s->resyncs++;
        }
        if (s->nrec == s->rcap) {
            s->rcap = s->rcap ? 2 * s->rcap : 64;
            s->r = realloc(s->r, s->rcap * sizeof *s->r);
            FZ_CHECK(s->r != NULL, "out of memory");
        }
        s->r[s->nrec++] = rr;
        pos = rr.pos + rr.total;
        expect = rr.off + 1;
    }
    s->end = pos;
    s->next_off = expect;
}

/* The accepted record with offset o, or NULL. */
static const refrec *find_rec(const seg *s, int64_t o) {
    size_t lo = 0, hi = s->nrec;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->r[mid].off < o) lo = mid + 1;
        else hi = mid;
    }
    return lo < s->nrec && s->r[lo].off == o ? &s->r[lo] : NULL;
}

static void scan_seg(seg *s) {
    if (s->sealed) ref_scan(s, 0, g.n);
    else ref_scan(s, 1, INT64_MAX);
}

static void put_entry(fz_buf *idx, fz_buf *tim, uint32_t rel, uint32_t pos, int64_t max_ts) {
    unsigned char e[16];
    fz_st32(e, rel);
    fz_st32(e + 4, pos);
    fz_st32(e + 8, tk_crc32c(0, e, 8));
    fz_buf_put(idx, e, 12);
    fz_st64(e, (uint64_t)max_ts);
    fz_st32(e + 8, rel);
    fz_st32(e + 12, tk_crc32c(0, e, 12));
    fz_buf_put(tim, e, 16);
}

/* What a writer would have left: over the accepted records (below `next`
 * in a sealed segment), an entry each time `interval` bytes of records were
 * accepted since the last one (none for the first record) and one for each
 * record a resync found; for a sealed segment also the trailer written when
 * it rolled at `next`. */
static void derive_index(seg *s, int64_t next, uint32_t interval) {
    uint64_t since = 0;
    int64_t mx = INT64_MIN;
    s->idx.len = s->tim.len = 0;
    for (size_t i = 0; i < s->nrec && s->r[i].off < next; i++) {
        int due = since >= interval || s->r[i].forced;
        if (s->r[i].ts > mx) mx = s->r[i].ts;
        if (due) {
            since = 0;
            put_entry(&s->idx, &s->tim, (uint32_t)(s->r[i].off - s->base), (uint32_t)s->r[i].pos, mx);
        }
        since += s->r[i].total;
    }
    if (s->sealed) {
        unsigned char t[24];
        fz_st64(t, (uint64_t)mx);
        fz_st32(t + 8, (uint32_t)(next - 1 - s->base));
        fz_st32(t + 12, (uint32_t)s->log.len);
        fz_st32(t + 16, tk_crc32c(0, s->log.p, s->log.len));
        fz_st32(t + 20, tk_crc32c(0, t, 20));
        fz_buf_put(&s->tim, t, 24);
    }
}

/* Mode 2: fix every whole entry's CRC, and a sealed trailer's. */
static void fix_index_crcs(seg *s) {
    size_t tl = s->tim.len, trailer = 0;
    for (size_t k = 0; k + 12 <= s->idx.len; k += 12)
        fz_st32(s->idx.p + k + 8, tk_crc32c(0, s->idx.p + k, 8));
    if (s->sealed && tl >= 24 && (tl - 24) % 16 == 0) {
        trailer = 24;
        fz_st32(s->tim.p + tl - 4, tk_crc32c(0, s->tim.p + tl - 24, 20));
    }
    for (size_t k = 0; k + 16 <= tl - trailer; k += 16)
        fz_st32(s->tim.p + k + 12, tk_crc32c(0, s->tim.p + k, 12));
}

static void take_chunk(fz_in *in, fz_buf *b) {
    size_t got;
    const unsigned char *p = fz_take(in, fz_u16(in), &got);
    b->len = 0;
    fz_buf_put(b, p, got);
}

static void write_seg(const seg *s) {
    char path[PATH_MAX];
    fz_seg_name(path, sizeof path, g.dir, s->base, ".log");
    fz_write_file(path, s->log.p, s->log.len);
    if (s->mode == 0) return;
    fz_seg_name(path, sizeof path, g.dir, s->base, ".index");
    fz_write_file(path, s->idx.p, s->idx.len);
    fz_seg_name(path, sizeof path, g.dir, s->base, ".timeindex");
    fz_write_file(path, s->tim.p, s->tim.len);
}

/* ------------------------------------------------------------------ */
/* Probes                                                               */
/* ------------------------------------------------------------------ */

static void add_probe(int64_t o) {
    if (g.nprobes < MAX_PROBES) g.probes[g.nprobes++] = o;
}

/* [from, from + count), stopping before `limit` and INT64_MAX. */
static void add_range(int64_t from, uint64_t count, int64_t limit) {
    for (uint64_t k = 0; k < count; k++) {
        if (from > INT64_MAX - (int64_t)k || from + (int64_t)k >= limit) break;
        add_probe(from + (int64_t)k);
    }
}

static void add_time(int64_t t) {
    for (size_t i = 0; i < g.ntimes; i++)
        if (g.times[i] == t) return;
    if (g.ntimes < MAX_TIMES) g.times[g.ntimes++] = t;
}

static void make_probes(void) {
    const int64_t edges[] = { INT64_MIN, -1, 0, 1, INT64_MAX - 1, INT64_MAX };
    seg *a = active_seg();
    g.nprobes = 0;
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++) add_probe(edges[i]);
    if (g.two) {
        uint64_t c = g.s[0].nrec + 3 < SPAN ? g.s[0].nrec + 3 : SPAN;
        add_range(1, c, g.n);
        add_range(g.n - 2 > 0 ? g.n - 2 : 0, 3, INT64_MAX);
    }
    add_range(a->base, a->nrec + 3 < SPAN ? a->nrec + 3 : SPAN, INT64_MAX);
    /* both edges of each hole or resync point, and the active end */
    for (int k = 0; k < (g.two ? 2 : 1); k++) {
        const seg *s = &g.s[k];
        for (size_t i = 0, m = 0; i < s->nrec && m < 48; i++) {
            if (!s->r[i].forced) continue;
            m++;
            if (i > 0) add_range(s->r[i - 1].off + 1, 2, INT64_MAX);
            add_range(s->r[i].off > 1 ? s->r[i].off - 1 : 0, 3, INT64_MAX);
        }
    }
    add_range(a->next_off > 1 ? a->next_off - 1 : 0, 3, INT64_MAX);
    g.ntimes = 0;
    add_time(INT64_MIN);
    add_time(INT64_MAX);
    add_time(0);
    for (int k = 0; k < 2; k++) {
        const seg *s = &g.s[k];
        if (k == 1 && !g.two) break;
        for (size_t i = 0; i < s->nrec && g.ntimes + 2 <= MAX_TIMES; i++) {
            add_time(s->r[i].ts);
            if (s->r[i].ts < INT64_MAX) add_time(s->r[i].ts + 1);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Running a handle                                                     */
/* ------------------------------------------------------------------ */

static const seg *seg_of(int64_t o) { return g.two && o < g.n ? &g.s[0] : active_seg(); }

/* A returned record: right offset, and its framing is in the .log. */
static uint32_t check_record(const char *who, int64_t o, const tk_record *rec, uint32_t *flen) {
    const seg *s = seg_of(o);
    tk_rec_in in = { rec->key, rec->key_len, rec->has_key, rec->value, rec->value_len,
                     rec->timestamp };
    uint64_t size = tk_rec_size(rec->key_len, rec->value_len);
    FZ_CHECK(rec->offset == o, "%s: read(%lld) returned offset %lld", who, (long long)o,
             (long long)rec->offset);
    FZ_CHECK(rec->has_key || rec->key_len == 0, "%s: offset %lld: absent key of %zu bytes",
             who, (long long)o, rec->key_len);
    FZ_CHECK(size <= s->log.len, "%s: offset %lld: %llu-byte record in a %zu-byte .log", who,
             (long long)o, (unsigned long long)size, s->log.len);
    g.frame.len = 0;
    fz_buf_reserve(&g.frame, (size_t)size);
    tk_rec_encode(g.frame.p, o, &in);
    FZ_CHECK(memmem(s->log.p, s->log.len, g.frame.p, (size_t)size) != NULL,
             "%s: offset %lld: returned record (%llu bytes, crc %08x) is not a record with a "
             "matching CRC in %020lld.log", who, (long long)o, (unsigned long long)size,
             fz_ld32(g.frame.p + 4), (long long)s->base);
    *flen = (uint32_t)size;
    return tk_crc32c(0, g.frame.p, (size_t)size);
}

/* The next offset after o that the model accepts in o's segment, else
 * that segment's end (INT64_MAX for the active one). */
static int64_t skip_to(int64_t o) {
    const seg *s = seg_of(o);
    const refrec *r = NULL;
    size_t lo = 0, hi = s->nrec;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->r[mid].off <= o) lo = mid + 1;
        else hi = mid;
    }
    if (lo < s->nrec) r = &s->r[lo];
    if (s->sealed) return r && r->off < g.n ? r->off : g.n;
    return r ? r->off : INT64_MAX;
}

static void run_handle(const char *who, tk_log *log, result *r, int writer) {
    tk_record rec = { 0 };
    tk_segment_info info[4];
    tk_err e;
    int64_t cur;
    int errs = 0;

    r->hwm = tk_log_high_water_mark(log);
    r->base = tk_log_base_offset(log);
    r->nsegs = tk_log_segments(log, info, 4);
    FZ_CHECK(r->base == 0, "%s: base offset %lld", who, (long long)r->base);
    FZ_CHECK(r->nsegs == (g.two ? 2u : 1u), "%s: %zu segments", who, r->nsegs);
    FZ_CHECK(info[r->nsegs - 1].base_offset == active_seg()->base && r->hwm >= active_seg()->base,
             "%s: active segment %lld, hwm %lld", who, (long long)info[r->nsegs - 1].base_offset,
             (long long)r->hwm);
    if (writer) {
        char path[PATH_MAX];
        struct stat st;
        fz_seg_name(path, sizeof path, g.dir, active_seg()->base, ".log");
        FZ_CHECK(stat(path, &st) == 0 && (uint64_t)st.st_size == info[r->nsegs - 1].size,
                 "%s: active .log is %lld bytes, the writer says %llu", who,
                 (long long)st.st_size, (unsigned long long)info[r->nsegs - 1].size);
    }

    for (size_t j = 0; j < g.nprobes; j++) {        /* newest first */
        size_t i = g.nprobes - 1 - j;
        int64_t o = g.probes[i];
        r->rc[i] = tk_log_read(log, o, &rec, &e);
        r->fcrc[i] = r->flen[i] = 0;
        if (r->rc[i] == TK_OK) {
            r->fcrc[i] = check_record(who, o, &rec, &r->flen[i]);
        } else {
            FZ_CHECK(r->rc[i] == TK_CORRUPT || r->rc[i] == TK_OUT_OF_RANGE,
                     "%s: read(%lld): %s: %s", who, (long long)o, tk_code_name(r->rc[i]), e.msg);
            FZ_CHECK((r->rc[i] == TK_OUT_OF_RANGE) == (o < r->base || o >= r->hwm),
                     "%s: read(%lld) in [%lld, %lld): %s: %s", who, (long long)o,
                     (long long)r->base, (long long)r->hwm, tk_code_name(r->rc[i]), e.msg);
        }
    }

    /* Iterate everything, stepping over records that do not read. */
    r->nit = 0;
    cur = r->base;
    while (cur < r->hwm && r->nit < MAX_ITER) {
        tk_iter *it;
        tk_code rc = tk_iter_open(log, cur, -1, &it, &e);
        FZ_CHECK(rc == TK_OK, "%s: iter_open(%lld): %s", who, (long long)cur, e.msg);
        while (r->nit < MAX_ITER) {
            int done = 0;
            size_t k = r->nit;
            rc = tk_iter_next(it, &rec, &done, &e);
            if (rc == TK_OK && done) { cur = r->hwm; break; }
            r->ioff[k] = cur;
            r->irc[k] = rc;
            r->icrc[k] = 0;
            r->nit++;
            if (rc != TK_OK) {
                FZ_CHECK(rc == TK_CORRUPT, "%s: iterating at %lld: %s", who, (long long)cur, e.msg);
                /* a segment may lack many offsets: skip to the next record the
                 * model has (the end of the sealed segment, or of the log) */
                cur = ++errs > 4 ? skip_to(cur) : cur + 1;
                break;
            }
            uint32_t flen;
            r->icrc[k] = check_record(who, cur, &rec, &flen);
            cur++;
        }
        tk_iter_close(it);
    }

    for (size_t i = 0; i < g.ntimes; i++) {
        r->toff[i] = -1;
        r->trc[i] = tk_log_offset_for_time(log, g.times[i], &r->toff[i], &e);
        FZ_CHECK(r->trc[i] == TK_OK || r->trc[i] == TK_CORRUPT, "%s: offset_for_time(%lld): %s",
                 who, (long long)g.times[i], e.msg);
        if (r->trc[i] == TK_OK)
            FZ_CHECK(r->toff[i] >= r->base && r->toff[i] <= r->hwm,
                     "%s: offset_for_time(%lld) = %lld outside [%lld, %lld]", who,
                     (long long)g.times[i], (long long)r->toff[i], (long long)r->base,
                     (long long)r->hwm);
    }

    /* Reads do not depend on what was read before. */
    for (size_t k = 0; k < g.nprobes; k++) {
        uint32_t flen;
        r->rc2[k] = tk_log_read(log, g.probes[k], &rec, &e);
        r->fcrc2[k] = r->rc2[k] == TK_OK ? check_record(who, g.probes[k], &rec, &flen) : 0;
        /* finding 8 (README): after bit rot, records that recovery reached
         * by a resync may first be looked up through a damaged copy with
         * the same offset; a later index repair then finds the intact one */
        const seg *ps = seg_of(g.probes[k]);
        if (ps->damaged && ps->resyncs > 0 && !getenv("FUZZ_NO_KNOWN")) continue;
        if (g.honest)
            FZ_CHECK(r->rc2[k] == r->rc[k] && r->fcrc2[k] == r->fcrc[k],
                     "%s: read(%lld) gave %s, then %s%s", who, (long long)g.probes[k],
                     tk_code_name(r->rc[k]), tk_code_name(r->rc2[k]),
                     r->rc[k] == r->rc2[k] ? " (a different record)" : "");
    }
    tk_record_free(&rec);
}

/* ------------------------------------------------------------------ */
/* The exact model (index files absent or derived)                      */
/* ------------------------------------------------------------------ */

/* The expected read of o: TK_OK with the record, or an error.  Beyond the
 * high water mark: OUT_OF_RANGE; an accepted record: OK when its CRC
 * matches (always in the active segment), else CORRUPT; an offset in a hole
 * (or, in a sealed segment, past the records): CORRUPT. */
static tk_code model_read(int64_t o, int64_t hwm, const seg **sp, const refrec **rp) {
    static refrec walked;
    const seg *s = seg_of(o);
    const refrec *r;
    size_t lo = 0, hi;
    uint64_t pos = 0;
    int64_t at;
    if (o < 0 || o >= hwm) return TK_OUT_OF_RANGE;
    *sp = s;
    *rp = r = find_rec(s, o);
    if (r) return r->crc_ok ? TK_OK : TK_CORRUPT;
    /* In a hole, reads walk record headers on from the last accepted record
     * before it: when their chain (sound headers, consecutive offsets; CRCs
     * are not checked on the way) reaches o and the record there is intact,
     * it is read.  That happens when a record the scan rejected for its CRC
     * is followed by intact records that a resync did not pick (it picked an
     * earlier intact record with a larger offset). */
    for (hi = s->nrec; lo < hi;) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->r[mid].off < o) lo = mid + 1;
        else hi = mid;
    }
    at = s->base;
    if (lo > 0) {
        pos = s->r[lo - 1].pos + s->r[lo - 1].total;
        at = s->r[lo - 1].off + 1;
    }
    for (;;) {
        /* (a sound header past the end stops the walk there, too) */
        if (!rec_at(s, pos, at, at + 1, 0, &walked)) return TK_CORRUPT;
        if (at == o) {
            *rp = &walked;
            return walked.crc_ok ? TK_OK : TK_CORRUPT;
        }
        pos += walked.total;
        at++;
    }
}

static void check_model(const char *who, const result *r) {
    const seg *a = active_seg();
    if (g.strict_active)
        FZ_CHECK(r->hwm == a->next_off,
                 "%s: high water mark %lld, expected %lld (segment %lld: %zu records, %zu "
                 "after a resync)", who, (long long)r->hwm, (long long)a->next_off,
                 (long long)a->base, a->nrec, a->resyncs);
    for (size_t i = 0; i < g.nprobes; i++) {
        int64_t o = g.probes[i];
        const seg *s = seg_of(o);
        const seg *ms = NULL;
        const refrec *mr = NULL;
        tk_code want;
        if (o >= 0 && (s->sealed ? !g.strict_sealed : !g.strict_active)) continue;
        want = model_read(o, r->hwm, &ms, &mr);
        FZ_CHECK(r->rc[i] == want, "%s: read(%lld) gave %s, expected %s", who, (long long)o,
                 tk_code_name(r->rc[i]), tk_code_name(want));
        if (want == TK_OK)
            FZ_CHECK(r->flen[i] == mr->total &&
                     r->fcrc[i] == tk_crc32c(0, ms->log.p + mr->pos, mr->total),
                     "%s: read(%lld) is not the record at byte %llu of %020lld.log", who,
                     (long long)o, (unsigned long long)mr->pos, (long long)ms->base);
    }
    for (size_t i = 0; i < r->nit; i++) {
        int64_t o = r->ioff[i];
        const seg *s = seg_of(o), *ms = NULL;
        const refrec *mr = NULL;
        tk_code want;
        if (s->sealed ? !g.strict_sealed : !g.strict_active) continue;
        want = model_read(o, r->hwm, &ms, &mr);
        FZ_CHECK(r->irc[i] == want, "%s: iterator at %lld gave %s, expected %s", who,
                 (long long)o, tk_code_name(r->irc[i]), tk_code_name(want));
        if (want == TK_OK)
            FZ_CHECK(r->icrc[i] == tk_crc32c(0, ms->log.p + mr->pos, mr->total),
                     "%s: iterator at %lld: not the record at byte %llu", who, (long long)o,
                     (unsigned long long)mr->pos);
    }
    if (!g.strict_time) return;
    for (size_t i = 0; i < g.ntimes; i++) {
        int64_t t = g.times[i], want = r->hwm;
        if (t == INT64_MIN && g.known_ts_none) continue;     /* finding 1, README */
        /* strict_time: the records are exactly 0 .. hwm-1, no holes */
        for (int64_t o = 0; o < r->hwm; o++) {
            const seg *s = seg_of(o);
            if (s->r[o - s->base].ts >= t) { want = o; break; }
        }
        FZ_CHECK(r->trc[i] == TK_OK && r->toff[i] == want,
                 "%s: offset_for_time(%lld) gave %s %lld, expected %lld", who, (long long)t,
                 tk_code_name(r->trc[i]), (long long)r->toff[i], (long long)want);
    }
}

static void check_same(const char *a, const result *x, const char *b, const result *y) {
    FZ_CHECK(x->hwm == y->hwm, "%s / %s: high water mark %lld / %lld", a, b,
             (long long)x->hwm, (long long)y->hwm);
    for (size_t i = 0; i < g.nprobes; i++)
        FZ_CHECK(x->rc[i] == y->rc[i] && x->fcrc[i] == y->fcrc[i],
                 "%s / %s: read(%lld): %s / %s", a, b, (long long)g.probes[i],
                 tk_code_name(x->rc[i]), tk_code_name(y->rc[i]));
    FZ_CHECK(x->nit == y->nit, "%s / %s: %zu / %zu iterator steps", a, b, x->nit, y->nit);
    for (size_t i = 0; i < x->nit; i++)
        FZ_CHECK(x->ioff[i] == y->ioff[i] && x->irc[i] == y->irc[i] && x->icrc[i] == y->icrc[i],
                 "%s / %s: iterator step %zu at %lld / %lld: %s / %s", a, b, i,
                 (long long)x->ioff[i], (long long)y->ioff[i], tk_code_name(x->irc[i]),
                 tk_code_name(y->irc[i]));
    for (size_t i = 0; i < g.ntimes; i++)
        FZ_CHECK(x->trc[i] == y->trc[i] && x->toff[i] == y->toff[i],
                 "%s / %s: offset_for_time(%lld): %s %lld / %s %lld", a, b,
                 (long long)g.times[i], tk_code_name(x->trc[i]), (long long)x->toff[i],
                 tk_code_name(y->trc[i]), (long long)y->toff[i]);
}

/* What a writer served survives: the same high water mark and reads. */
static void check_same_reads(const char *a, const result *x, const char *b, const result *y) {
    FZ_CHECK(x->hwm == y->hwm, "%s / %s: high water mark %lld / %lld", a, b,
             (long long)x->hwm, (long long)y->hwm);
    for (size_t i = 0; i < g.nprobes; i++)
        FZ_CHECK(x->rc2[i] == y->rc2[i] && x->fcrc2[i] == y->fcrc2[i],
                 "%s / %s: read(%lld): %s / %s", a, b, (long long)g.probes[i],
                 tk_code_name(x->rc2[i]), tk_code_name(y->rc2[i]));
}

/* After a writer: sealed .log untouched, active .log a prefix (exactly the
 * valid prefix in strict mode). */
static void check_files(const char *who) {
    fz_buf b = { 0 };
    char path[PATH_MAX];
    for (int k = 0; k < (g.two ? 2 : 1); k++) {
        const seg *s = &g.s[k];
        fz_seg_name(path, sizeof path, g.dir, s->base, ".log");
        FZ_CHECK(fz_read_file(path, &b) == 0, "%s: %s is gone", who, path);
        if (s->sealed)
            FZ_CHECK(b.len == s->log.len && (b.len == 0 || memcmp(b.p, s->log.p, b.len) == 0),
                     "%s: sealed %s was modified (%zu -> %zu bytes)", who, path, s->log.len, b.len);
        else
            FZ_CHECK(b.len <= s->log.len && (b.len == 0 || memcmp(b.p, s->log.p, b.len) == 0),
                     "%s: active %s is not a prefix of what was written (%zu -> %zu bytes)",
                     who, path, s->log.len, b.len);
        if (!s->sealed && g.strict_active)
            FZ_CHECK(b.len == s->end, "%s: active %s cut at %zu, expected %llu", who,
                     path, b.len, (unsigned long long)s->end);
    }
    if (g.ignored) {        /* not a segment: nobody touches it */
        const seg *s = &g.s[1];
        fz_seg_name(path, sizeof path, g.dir, s->base, ".log");
        FZ_CHECK(fz_read_file(path, &b) == 0 && b.len == s->log.len &&
                 (b.len == 0 || memcmp(b.p, s->log.p, b.len) == 0),
                 "%s: %s (not a segment) was modified or removed", who, path);
    }
    fz_buf_free(&b);
}

static tk_log *open_log(const char *who, uint32_t interval, int readonly) {
    tk_log_opts o;
    tk_log *log = NULL;
    tk_err e;
    tk_log_opts_init(&o);
    o.index_interval_bytes = interval;
    o.mode = readonly ? TK_LOG_READONLY
             : g.shared && strcmp(who, "w1") != 0 ? TK_LOG_SHARED : TK_LOG_EXCLUSIVE;
    tk_code rc = tk_log_open(g.dir, &o, &log, &e);
    FZ_CHECK(rc == TK_OK, "%s: open: %s: %s", who, tk_code_name(rc), e.msg);
    return log;
}

static result res[4];

static void append_and_reopen(uint32_t interval) {
    static const tk_rec_in add = { "fz", 2, 1, "appended", 8, 4242 };
    tk_record rec = { 0 };
    tk_err e;
    int64_t hwm, first = -1;
    tk_log *w = open_log("w3", interval, 0);
    tk_code rc;
    hwm = tk_log_high_water_mark(w);
    if (g.strict_active)
        FZ_CHECK(hwm == res[3].hwm, "w3: high water mark %lld after w2's %lld", (long long)hwm,
                 (long long)res[3].hwm);
    rc = tk_log_append(w, &add, 1, &first, &e);
    FZ_CHECK(rc == TK_OK && first == hwm, "w3: append at %lld: %s (first %lld)", (long long)hwm,
             rc == TK_OK ? "ok" : e.msg, (long long)first);
    tk_log_close(w);
    w = open_log("w4", interval, 0);
    FZ_CHECK(tk_log_high_water_mark(w) == hwm + 1, "w4: high water mark %lld after appending at %lld",
             (long long)tk_log_high_water_mark(w), (long long)hwm);
    rc = tk_log_read(w, hwm, &rec, &e);
    FZ_CHECK(rc == TK_OK && rec.offset == hwm && rec.timestamp == 4242 && rec.has_key &&
             rec.key_len == 2 && memcmp(rec.key, "fz", 2) == 0 && rec.value_len == 8 &&
             memcmp(rec.value, "appended", 8) == 0,
             "w4: the record appended at %lld does not read back: %s", (long long)hwm,
             rc == TK_OK ? "different record" : e.msg);
    tk_record_free(&rec);
    tk_log_close(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_in in = { data, size, 0 };
    unsigned flags = fz_byte(&in), ivs = fz_byte(&in), keep = fz_byte(&in);
    uint64_t n = fz_u64(&in) & (uint64_t)INT64_MAX;
    uint32_t open_iv = intervals[ivs & 15], derive_iv = intervals[ivs >> 4];
    tk_log *w, *ro;

    if (!g.dir[0]) snprintf(g.dir, sizeof g.dir, "%s/log", fz_scratch("fuzz_segment"));
    g.two = flags & 1;
    g.shared = (flags & 0x80) != 0;
    g.n = n ? (int64_t)n : 1;
    /* A base above INT64_MAX - 2^33 names no segment (offsets in a segment
     * are base + u32): the engine ignores that .log, and segment 0 is the
     * active one. */
    g.ignored = g.two && g.n > INT64_MAX - ((int64_t)1 << 33);
    if (g.ignored) g.two = 0;
    for (int k = 0; k < 2; k++) {
        seg *s = &g.s[k];
        int own_bits = g.two || g.ignored ? (k == 0 ? 3 : 1) : 1;
        s->base = k == 0 ? 0 : g.n;
        s->sealed = g.two && k == 0;
        s->mode = (flags >> own_bits) & 3;
        take_chunk(&in, &s->log);
        take_chunk(&in, &s->idx);
        take_chunk(&in, &s->tim);
        if (k == 1 && !g.two) break;
        fix_records(s, flags & 0x40, flags & 0x20, keep);
        scan_seg(s);
        if (s->mode == 2) fix_index_crcs(s);
        s->damaged = 0;
        if (s->mode == 3) {
            s->dmg.len = 0;
            fz_buf_put(&s->dmg, s->idx.p, s->idx.len);
            derive_index(s, s->sealed ? g.n : INT64_MAX, derive_iv);
            for (size_t d = 0; d + 3 <= s->dmg.len && s->log.len > 0; d += 3) {
                size_t at = fz_ld16(s->dmg.p + d) % s->log.len;
                if (!s->dmg.p[d + 2]) continue;
                s->log.p[at] ^= s->dmg.p[d + 2];
                s->damaged = 1;
            }
            if (s->damaged) scan_seg(s);
        }
    }
    g.known_rebuild = 0;      /* finding 7 is fixed: the guard is gone */
    g.strict_active = (active_seg()->mode == 0 || active_seg()->mode == 3) && !active_seg()->damaged &&
                      !g.known_rebuild;
    g.strict_sealed = g.two && (g.s[0].mode == 0 || g.s[0].mode == 3) && !g.s[0].damaged;
    g.honest = (active_seg()->mode == 0 || active_seg()->mode == 3) &&
               (!g.two || g.s[0].mode == 0 || g.s[0].mode == 3) && !g.known_rebuild;
    /* offset_for_time is exact when the records are exactly 0 .. hwm-1:
     * no resync in either segment, every sealed record below N intact */
    g.strict_time = g.strict_active && active_seg()->resyncs == 0;
    if (g.two && g.strict_time) {
        const seg *s = &g.s[0];
        g.strict_time = g.strict_sealed && s->resyncs == 0 && s->nrec >= (uint64_t)g.n;
        for (int64_t i = 0; g.strict_time && i < g.n; i++) g.strict_time = s->r[i].crc_ok;
    }

    /* finding 1 (README): a segment whose records all have timestamp
     * INT64_MIN (all accepted ones, or all below N) */
    g.known_ts_none = 0;
    if (!getenv("FUZZ_NO_KNOWN"))
        for (int k = 0; k < (g.two ? 2 : 1); k++) {
            const seg *s = &g.s[k];
            size_t i = 0, below = 0;
            while (below < s->nrec && (!s->sealed || s->r[below].off < g.n)) below++;
            while (i < s->nrec && s->r[i].ts == INT64_MIN) i++;
            g.known_ts_none |= i > 0 && (i >= below || i == s->nrec);
        }

    if (getenv("FUZZ_DEBUG"))         /* the model's view, to explain a failure */
        for (int k = 0; k < (g.two ? 2 : 1); k++) {
            const seg *s = &g.s[k];
            fprintf(stderr, "segment %lld (%s, mode %d%s): %zu-byte .log, %zu records, "
                    "next %lld, scan ends at byte %llu\n", (long long)s->base,
                    s->sealed ? "sealed" : "active", s->mode, s->damaged ? ", damaged" : "",
                    s->log.len, s->nrec, (long long)s->next_off, (unsigned long long)s->end);
            for (size_t i = 0; i < s->nrec; i++)
                fprintf(stderr, "  offset %lld at byte %llu, %llu bytes, ts %lld%s%s\n",
                        (long long)s->r[i].off, (unsigned long long)s->r[i].pos,
                        (unsigned long long)s->r[i].total, (long long)s->r[i].ts,
                        s->r[i].crc_ok ? "" : ", CRC mismatch", s->r[i].forced ? ", resync" : "");
        }

    fz_clean_dir(g.dir);
    write_seg(&g.s[0]);
    if (g.two || g.ignored) write_seg(&g.s[1]);
    make_probes();

    /* 1. a reader first: it must not change anything */
    ro = open_log("ro1", open_iv, 1);
    run_handle("ro1", ro, &res[0], 0);
    tk_log_close(ro);
    check_model("ro1", &res[0]);

    /* 2. the writer recovers */
    w = open_log("w1", open_iv, 0);
    run_handle("w1", w, &res[1], 1);
    check_files("w1");
    check_model("w1", &res[1]);
    check_same("ro1", &res[0], "w1", &res[1]);

    /* 3. a reader beside the writer */
    ro = open_log("ro2", open_iv, 1);
    run_handle("ro2", ro, &res[2], 0);
    tk_log_close(ro);
    tk_log_close(w);
    check_model("ro2", &res[2]);

    /* 4. recovering again */
    w = open_log("w2", open_iv, 0);
    run_handle("w2", w, &res[3], 1);
    tk_log_close(w);
    check_files("w2");
    check_model("w2", &res[3]);
    if (g.strict_active && (!g.two || g.strict_sealed)) {
        check_same("w1", &res[1], "ro2", &res[2]);
        check_same("w1", &res[1], "w2", &res[3]);
    } else if (g.honest) {
        check_same_reads("w1", &res[1], "ro2", &res[2]);
        check_same_reads("w1", &res[1], "w2", &res[3]);
    }

    /* 5. a record appended after recovery is there after a reopen */
    append_and_reopen(open_iv);
    return 0;
}
