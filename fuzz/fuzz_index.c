/*
 * fuzz_index.c -- a valid log whose index files are replaced by fuzz input.
 *
 * Once per process the harness appends NREC records (timestamps that go
 * backwards now and then) to a log that rolls into several small segments,
 * keeps its files in memory, and records what every read, iteration and
 * offset_for_time returns with the correct index files (checked against a
 * brute-force model).  Each run writes the same .log files with index files
 * built from the input, opens the log read-only, as a writer, and read-only
 * again, and requires the same answers from each handle.
 *
 * Input layout (short inputs read as zeros past their end):
 *   [0]  flags: bit 0 fix the CRC of every whole entry of the given files,
 *        bit 1 fix the CRC of a sealed .timeindex's trailer (its last 24
 *        bytes), bits 2-5 index_interval_bytes to open with (`intervals`)
 *   [1]  where a second iterator starts (modulo hwm + 1)
 *   then for each segment, oldest first, its .index then its .timeindex:
 *        op byte; for ops 2 and 3 a u16 length L and L bytes
 *        op & 3 == 0  the correct file        op & 3 == 1  no file
 *        op & 3 == 2  the L bytes             op & 3 == 3  the correct file
 *                     XOR the L bytes (bytes past its end are appended);
 *                     with op & 4 the result is cut to L bytes
 *
 * Index files are hints (docs/FORMAT.md): whatever they hold, reads and
 * iteration must return exactly what they return with the correct files,
 * and a writer must never change a .log.  offset_for_time must too, with one
 * exception the format cannot detect: a .timeindex entry whose CRC matches
 * but whose max_timestamp is below the true maximum up to its record (yet
 * not below that record's own timestamp), or a seal trailer whose
 * max_timestamp is below the segment's.  Such a lie sends the search past
 * the answer; for those inputs offset_for_time only has to stay within
 * [base, hwm] (or report CORRUPT).  A trailer whose max_timestamp is too
 * high must not mislead it (finding 3 of fuzz/README.md, fixed: checked).
 */
#include "common.c"

#include "takhin.h"
#include "record.h"

#define NREC        48
#define MAXSEG      16
#define SEG_SIZE    700
#define BUILD_IV    100
#define MAX_PROBES  (NREC + 8)
#define MAX_TIMES   (2 * NREC + 4)

static const uint32_t intervals[16] = { 100, 1, 2, 7, 34, 64, 256, 4096,
                                        3, 50, 128, 512, 1000, 10, 20, 40 };

typedef struct pseg {
    int64_t base, next;
    int sealed;
    fz_buf log, idx, tim;           /* the pristine files */
    fz_buf widx, wtim;              /* this run's index files */
    int has_idx, has_tim;
    int64_t maxts;
} pseg;

typedef struct result {
    tk_code rc[MAX_PROBES];
    uint32_t fcrc[MAX_PROBES];
    tk_code trc[MAX_TIMES];
    int64_t toff[MAX_TIMES];
} result;

static struct {
    char pristine[PATH_MAX], work[PATH_MAX];
    pseg s[MAXSEG];
    size_t nseg;
    int64_t hwm;
    int64_t ts[NREC], runmax[NREC];
    uint64_t pos[NREC], total[NREC];
    int64_t probes[MAX_PROBES];
    size_t np;
    int64_t times[MAX_TIMES];
    size_t nt;
    result want;
    fz_buf frame;
} g;

/* ------------------------------------------------------------------ */
/* The pristine log                                                     */
/* ------------------------------------------------------------------ */

static int64_t rec_ts(int i) {
    int64_t t = 1000 + 10 * i;
    if (i % 5 == 3) t -= 45;                    /* backwards */
    if (i % 11 == 10) t = 900;                  /* far backwards */
    return t;
}

static void build_pristine(void) {
    tk_log_opts o;
    tk_log *log;
    tk_err e;
    tk_segment_info info[MAXSEG];
    char key[16], val[128], path[PATH_MAX];

    tk_log_opts_init(&o);
    o.max_segment_size = SEG_SIZE;
    o.index_interval_bytes = BUILD_IV;
    FZ_CHECK(tk_log_open(g.pristine, &o, &log, &e) == TK_OK, "build: open: %s", e.msg);
    for (int i = 0; i < NREC; i++) {
        size_t vlen = (size_t)(i * 7) % 60;
        for (size_t k = 0; k < vlen; k++) val[k] = (char)('a' + (i + k) % 26);
        snprintf(key, sizeof key, "k%d", i);
        tk_rec_in r = { i % 3 == 1 ? key : NULL, i % 3 == 1 ? strlen(key) : 0, i % 3 != 0,
                        val, vlen, i % 7 == 6 ? rec_ts(i - 1) : rec_ts(i) };
        g.ts[i] = r.timestamp;
        FZ_CHECK(tk_log_append(log, &r, 1, NULL, &e) == TK_OK, "build: append: %s", e.msg);
    }
    g.hwm = tk_log_high_water_mark(log);
    g.nseg = tk_log_segments(log, info, MAXSEG);
    FZ_CHECK(g.hwm == NREC && g.nseg >= 3 && g.nseg <= MAXSEG, "build: %zu segments", g.nseg);
    tk_log_close(log);

    for (size_t k = 0; k < g.nseg; k++) {
        pseg *s = &g.s[k];
        s->base = info[k].base_offset;
        s->next = info[k].next_offset;
        s->sealed = k + 1 < g.nseg;
        s->maxts = INT64_MIN;
        fz_seg_name(path, sizeof path, g.pristine, s->base, ".log");
        FZ_CHECK(fz_read_file(path, &s->log) == 0, "build: no %s", path);
        fz_seg_name(path, sizeof path, g.pristine, s->base, ".index");
        FZ_CHECK(fz_read_file(path, &s->idx) == 0, "build: no %s", path);
        fz_seg_name(path, sizeof path, g.pristine, s->base, ".timeindex");
        FZ_CHECK(fz_read_file(path, &s->tim) == 0, "build: no %s", path);
        FZ_CHECK(s->tim.len == s->idx.len / 12 * 16 + (s->sealed ? 24 : 0),
                 "build: segment %lld: index files of %zu and %zu bytes", (long long)s->base,
                 s->idx.len, s->tim.len);
        /* where each record is, and the running maximum timestamp */
        uint64_t pos = 0;
        for (int64_t o2 = s->base; o2 < s->next; o2++) {
            uint32_t length = fz_ld32(s->log.p + pos);
            FZ_CHECK((int64_t)fz_ld64(s->log.p + pos + 10) == o2, "build: offset %lld", (long long)o2);
            g.pos[o2] = pos;
            g.total[o2] = 4 + (uint64_t)length;
            if (g.ts[o2] > s->maxts) s->maxts = g.ts[o2];
            g.runmax[o2] = s->maxts;
            pos += g.total[o2];
        }
        FZ_CHECK(pos == s->log.len, "build: segment %lld: %llu of %zu bytes", (long long)s->base,
                 (unsigned long long)pos, s->log.len);
    }
}

static const pseg *seg_of(int64_t o) {
    size_t k = 0;
    while (k + 1 < g.nseg && g.s[k + 1].base <= o) k++;
    return &g.s[k];
}

/* ------------------------------------------------------------------ */
/* Asking a handle                                                      */
/* ------------------------------------------------------------------ */

static uint32_t frame_crc(const tk_record *rec) {
    tk_rec_in in = { rec->key, rec->key_len, rec->has_key, rec->value, rec->value_len,
                     rec->timestamp };
    size_t size = (size_t)tk_rec_size(rec->key_len, rec->value_len);
    g.frame.len = 0;
    fz_buf_reserve(&g.frame, size);
    tk_rec_encode(g.frame.p, rec->offset, &in);
    return tk_crc32c(0, g.frame.p, size);
}

static void ask(tk_log *log, result *r) {
    tk_record rec = { 0 };
    tk_err e;
    for (size_t i = 0; i < g.np; i++) {
        r->rc[i] = tk_log_read(log, g.probes[i], &rec, &e);
        r->fcrc[i] = r->rc[i] == TK_OK ? frame_crc(&rec) : 0;
        if (r->rc[i] == TK_OK)
            FZ_CHECK(rec.offset == g.probes[i], "read(%lld) returned offset %lld",
                     (long long)g.probes[i], (long long)rec.offset);
    }
    for (size_t i = 0; i < g.nt; i++) {
        r->toff[i] = -1;
        r->trc[i] = tk_log_offset_for_time(log, g.times[i], &r->toff[i], &e);
    }
    tk_record_free(&rec);
}

/* Iterating from `from` must yield exactly the expected reads. */
static void iterate(const char *who, tk_log *log, int64_t from) {
    tk_record rec = { 0 };
    tk_iter *it;
    tk_err e;
    int done = 0;
    int64_t o = from;
    FZ_CHECK(tk_iter_open(log, from, -1, &it, &e) == TK_OK, "%s: iter_open(%lld): %s", who,
             (long long)from, e.msg);
    for (;;) {
        tk_code rc = tk_iter_next(it, &rec, &done, &e);
        FZ_CHECK(rc == TK_OK, "%s: iterator from %lld at %lld: %s", who, (long long)from,
                 (long long)o, e.msg);
        if (done) break;
        FZ_CHECK(o < g.hwm && rec.offset == o && frame_crc(&rec) == g.want.fcrc[o + 1],
                 "%s: iterator from %lld: offset %lld is not the record expected",
                 who, (long long)from, (long long)o);
        o++;
    }
    FZ_CHECK(o == g.hwm, "%s: iterator from %lld stopped at %lld", who, (long long)from,
             (long long)o);
    tk_iter_close(it);
    tk_record_free(&rec);
}

static void make_probes(void) {
    g.np = 0;
    g.probes[g.np++] = -1;                      /* probes[o + 1] is offset o */
    for (int64_t o = 0; o <= g.hwm + 1; o++) g.probes[g.np++] = o;
    g.probes[g.np++] = INT64_MIN;
    g.probes[g.np++] = INT64_MAX;
    g.nt = 0;
    g.times[g.nt++] = INT64_MIN;
    g.times[g.nt++] = INT64_MAX;
    g.times[g.nt++] = 0;
    for (int i = 0; i < NREC; i++)
        for (int d = 0; d <= 1; d++) {         /* t = ts - 1 acts as t = ts */
            int64_t t = g.ts[i] + d;
            size_t k = 0;
            while (k < g.nt && g.times[k] != t) k++;
            if (k == g.nt && g.nt < MAX_TIMES) g.times[g.nt++] = t;
        }
}

static void init(void) {
    const char *root = fz_scratch("fuzz_index");
    tk_log_opts o;
    tk_log *log;
    tk_err e;

    snprintf(g.pristine, sizeof g.pristine, "%s/pristine", root);
    snprintf(g.work, sizeof g.work, "%s/work", root);
    build_pristine();
    make_probes();

    /* The answers with the correct index files ... */
    tk_log_opts_init(&o);
    o.mode = TK_LOG_READONLY;
    FZ_CHECK(tk_log_open(g.pristine, &o, &log, &e) == TK_OK, "open pristine: %s", e.msg);
    ask(log, &g.want);
    iterate("pristine", log, 0);
    tk_log_close(log);

    /* ... must be the right ones. */
    for (size_t i = 0; i < g.np; i++) {
        int64_t o2 = g.probes[i];
        if (o2 < 0 || o2 >= g.hwm) {
            FZ_CHECK(g.want.rc[i] == TK_OUT_OF_RANGE, "pristine: read(%lld): %s", (long long)o2,
                     tk_code_name(g.want.rc[i]));
            continue;
        }
        const pseg *s = seg_of(o2);
        FZ_CHECK(g.want.rc[i] == TK_OK &&
                 g.want.fcrc[i] == tk_crc32c(0, s->log.p + g.pos[o2], g.total[o2]),
                 "pristine: read(%lld) is wrong", (long long)o2);
    }
    for (size_t i = 0; i < g.nt; i++) {
        int64_t want = g.hwm;
        for (int64_t o2 = 0; o2 < g.hwm; o2++)
            if (g.ts[o2] >= g.times[i]) { want = o2; break; }
        FZ_CHECK(g.want.trc[i] == TK_OK && g.want.toff[i] == want,
                 "pristine: offset_for_time(%lld) = %lld, expected %lld",
                 (long long)g.times[i], (long long)g.want.toff[i], (long long)want);
    }
}

/* ------------------------------------------------------------------ */
/* One run                                                              */
/* ------------------------------------------------------------------ */

static int build_file(fz_in *in, const fz_buf *correct, fz_buf *out) {
    unsigned op = fz_byte(in);
    size_t len = 0;
    const unsigned char *p = NULL;
    out->len = 0;
    if ((op & 3) >= 2) p = fz_take(in, fz_u16(in), &len);
    switch (op & 3) {
    case 0:
        fz_buf_put(out, correct->p, correct->len);
        return 1;
    case 1:
        return 0;
    case 2:
        fz_buf_put(out, p, len);
        return 1;
    default:
        fz_buf_put(out, correct->p, correct->len);
        for (size_t k = 0; k < len; k++) {
            if (k < out->len) out->p[k] ^= p[k];
            else fz_buf_put(out, p + k, 1);
        }
        if (op & 4) out->len = len < out->len ? len : out->len;
        return 1;
    }
}

/* Does any CRC-valid time entry claim a maximum below the truth that its
 * own record does not give away, or a trailer one below the segment's? */
static int time_lies(const pseg *s) {
    const unsigned char *t = s->wtim.p;
    size_t len = s->has_tim ? s->wtim.len : 0;
    for (size_t k = 0; k + 16 <= len; k += 16) {
        uint32_t rel = fz_ld32(t + k + 8);
        int64_t mx = (int64_t)fz_ld64(t + k);
        if (fz_ld32(t + k + 12) != tk_crc32c(0, t + k, 12)) continue;
        if (rel >= (uint64_t)(s->next - s->base)) continue;
        if (mx < g.runmax[s->base + rel] && mx >= g.ts[s->base + rel]) return 1;
    }
    if (s->sealed && len >= 24 && fz_ld32(t + len - 4) == tk_crc32c(0, t + len - 24, 20)) {
        int64_t mx = (int64_t)fz_ld64(t + len - 24);
        if (mx < s->maxts) return 1;
    }
    return 0;
}

static void fix_crcs(pseg *s, int entries, int trailer) {
    fz_buf *x = &s->widx, *t = &s->wtim;
    size_t tl = t->len, tr = s->sealed && tl >= 24 ? 24 : 0;
    if (entries) {
        for (size_t k = 0; k + 12 <= x->len; k += 12)
            fz_st32(x->p + k + 8, tk_crc32c(0, x->p + k, 8));
        for (size_t k = 0; k + 16 <= tl - tr; k += 16)
            fz_st32(t->p + k + 12, tk_crc32c(0, t->p + k, 12));
    }
    if (trailer && tr) fz_st32(t->p + tl - 4, tk_crc32c(0, t->p + tl - 24, 20));
}

static void compare(const char *who, const result *r, int lenient) {
    for (size_t i = 0; i < g.np; i++)
        FZ_CHECK(r->rc[i] == g.want.rc[i] && r->fcrc[i] == g.want.fcrc[i],
                 "%s: read(%lld) gave %s, expected %s%s", who, (long long)g.probes[i],
                 tk_code_name(r->rc[i]), tk_code_name(g.want.rc[i]),
                 r->rc[i] == g.want.rc[i] ? " (a different record)" : "");
    for (size_t i = 0; i < g.nt; i++) {
        if (lenient) {
            FZ_CHECK(r->trc[i] == TK_CORRUPT ||
                     (r->trc[i] == TK_OK && r->toff[i] >= 0 && r->toff[i] <= g.hwm),
                     "%s: offset_for_time(%lld): %s %lld", who, (long long)g.times[i],
                     tk_code_name(r->trc[i]), (long long)r->toff[i]);
            continue;
        }
        FZ_CHECK(r->trc[i] == g.want.trc[i] && r->toff[i] == g.want.toff[i],
                 "%s: offset_for_time(%lld) gave %s %lld, expected %lld", who,
                 (long long)g.times[i], tk_code_name(r->trc[i]), (long long)r->toff[i],
                 (long long)g.want.toff[i]);
    }
}

static tk_log *open_log(const char *who, uint32_t interval, int readonly) {
    tk_log_opts o;
    tk_log *log;
    tk_err e;
    tk_log_opts_init(&o);
    o.index_interval_bytes = interval;
    o.mode = readonly ? TK_LOG_READONLY : TK_LOG_EXCLUSIVE;
    tk_code rc = tk_log_open(g.work, &o, &log, &e);
    FZ_CHECK(rc == TK_OK, "%s: open: %s: %s", who, tk_code_name(rc), e.msg);
    return log;
}

static result got;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_in in = { data, size, 0 };
    unsigned flags, start;
    uint32_t iv;
    int lenient = 0;
    char path[PATH_MAX];
    fz_buf b = { 0 };
    tk_log *log;

    if (!g.hwm) init();
    flags = fz_byte(&in);
    start = fz_byte(&in);
    iv = intervals[(flags >> 2) & 15];
    for (size_t k = 0; k < g.nseg; k++) {
        pseg *s = &g.s[k];
        s->has_idx = build_file(&in, &s->idx, &s->widx);
        s->has_tim = build_file(&in, &s->tim, &s->wtim);
        fix_crcs(s, flags & 1, flags & 2);
        lenient |= time_lies(s);
    }

    fz_clean_dir(g.work);
    for (size_t k = 0; k < g.nseg; k++) {
        const pseg *s = &g.s[k];
        fz_seg_name(path, sizeof path, g.work, s->base, ".log");
        fz_write_file(path, s->log.p, s->log.len);
        fz_seg_name(path, sizeof path, g.work, s->base, ".index");
        if (s->has_idx) fz_write_file(path, s->widx.p, s->widx.len);
        fz_seg_name(path, sizeof path, g.work, s->base, ".timeindex");
        if (s->has_tim) fz_write_file(path, s->wtim.p, s->wtim.len);
    }

    log = open_log("ro1", iv, 1);
    ask(log, &got);
    compare("ro1", &got, lenient);
    iterate("ro1", log, 0);
    iterate("ro1", log, (int64_t)(start % (unsigned)(g.hwm + 1)));
    tk_log_close(log);

    log = open_log("w1", iv, 0);
    FZ_CHECK(tk_log_high_water_mark(log) == g.hwm, "w1: high water mark %lld",
             (long long)tk_log_high_water_mark(log));
    ask(log, &got);
    compare("w1", &got, lenient);
    iterate("w1", log, (int64_t)(start % (unsigned)(g.hwm + 1)));
    tk_log_close(log);
    for (size_t k = 0; k < g.nseg; k++) {       /* index files never cost a record */
        const pseg *s = &g.s[k];
        fz_seg_name(path, sizeof path, g.work, s->base, ".log");
        FZ_CHECK(fz_read_file(path, &b) == 0 && b.len == s->log.len &&
                 memcmp(b.p, s->log.p, b.len) == 0, "w1: %s was modified", path);
    }
    fz_buf_free(&b);

    log = open_log("ro2", iv, 1);
    ask(log, &got);
    compare("ro2", &got, lenient);
    iterate("ro2", log, 0);
    tk_log_close(log);
    return 0;
}
