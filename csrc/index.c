/*
 * index.c -- sparse indexes: search, parse, encode.
 */
#include <stdlib.h>

#include "index.h"
#include "record.h"
#include "sys.h"
#include "internal.h"

void tk_index_free(tk_index *ix) {
    free(ix->e);
    ix->e = NULL;
    ix->n = ix->cap = 0;
}

int tk_index_push(tk_index *ix, uint32_t rel, uint32_t pos, int64_t max_ts) {
    if (ix->n == ix->cap) {
        size_t cap = ix->cap ? ix->cap * 2 : 64;
        tk_ientry *e = tk_realloc(ix->e, cap * sizeof *e);
        if (!e) return -1;
        ix->e = e;
        ix->cap = cap;
    }
    ix->e[ix->n].rel = rel;
    ix->e[ix->n].pos = pos;
    ix->e[ix->n].max_ts = max_ts;
    ix->n++;
    return 0;
}

void tk_index_truncate(tk_index *ix, size_t n) {
    if (n < ix->n) ix->n = n;
}

long tk_index_floor_rel(const tk_index *ix, uint32_t rel) {
    size_t lo = 0, hi = ix->n;          /* first entry with e.rel > rel */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->e[mid].rel <= rel) lo = mid + 1; else hi = mid;
    }
    return (long)lo - 1;
}

long tk_index_floor_ts_below(const tk_index *ix, int64_t ts) {
    size_t lo = 0, hi = ix->n;          /* first entry with e.max_ts >= ts */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->e[mid].max_ts < ts) lo = mid + 1; else hi = mid;
    }
    return (long)lo - 1;
}

int tk_idxstate_step(tk_idxstate *st, int64_t ts, uint64_t size, uint32_t interval) {
    int due = st->since >= interval;
    if (ts > st->max_ts) st->max_ts = ts;
    if (due) st->since = 0;
    st->since += size;
    return due;
}

/* Each entry ends with the CRC32C of its other bytes, so a damaged entry
 * is found when the file is loaded rather than when it misleads a lookup. */
static int entry_crc_ok(const unsigned char *e, size_t len) {
    return tk_load32(e + len) == tk_crc32c(0, e, len);
}

static void seal_entry(unsigned char *e, size_t len) {
    tk_store32(e + len, tk_crc32c(0, e, len));
}

/* Appends the entries of off/tim (n of each) that continue ix
 * consistently; returns how many, or -1 when out of memory. */
static long push_entries(tk_index *ix, const unsigned char *off, const unsigned char *tim,
                         size_t n, uint64_t log_size) {
    const tk_ientry *last = ix->n ? &ix->e[ix->n - 1] : NULL;
    uint32_t prev_rel = last ? last->rel : 0, prev_pos = last ? last->pos : 0;
    int64_t prev_ts = last ? last->max_ts : TK_TS_NONE;
    size_t k;
    for (k = 0; k < n; k++) {
        const unsigned char *o = off + k * TK_OIDX_ENTRY, *t = tim + k * TK_TIDX_ENTRY;
        uint32_t rel = tk_load32(o), pos = tk_load32(o + 4);
        int64_t ts = (int64_t)tk_load64(t);
        uint32_t trel = tk_load32(t + 8);
        if (!entry_crc_ok(o, 8) || !entry_crc_ok(t, 12)) break;
        /* Offsets and positions increase.  An entry for the segment's first
         * record is the exception: it exists when that record is not at
         * position 0 (recovery stepped over damage before it). */
        if ((rel <= prev_rel && !(ix->n == 0 && rel == 0 && pos > 0)) || pos <= prev_pos ||
            pos >= log_size)
            break;
        if (trel != rel || ts < prev_ts) break;
        if (tk_index_push(ix, rel, pos, ts) < 0) return -1;
        prev_rel = rel; prev_pos = pos; prev_ts = ts;
    }
    return (long)k;
}

int tk_index_append_parsed(tk_index *ix, const unsigned char *off, const unsigned char *tim,
                           size_t n, uint64_t log_size) {
    return push_entries(ix, off, tim, n, log_size) < 0 ? -1 : 0;
}

int tk_index_parse(tk_index *ix, const unsigned char *off, size_t off_len,
                   const unsigned char *tim, size_t tim_len, uint64_t log_size,
                   int sealed, tk_seal *seal) {
    size_t trailer = sealed ? TK_SEAL_SIZE : 0;
    size_t n_off = off_len / TK_OIDX_ENTRY;
    size_t n_tim = (tim_len >= trailer ? tim_len - trailer : 0) / TK_TIDX_ENTRY;
    size_t n = n_off < n_tim ? n_off : n_tim;
    int whole = off_len % TK_OIDX_ENTRY == 0 && tim_len >= trailer &&
                (tim_len - trailer) % TK_TIDX_ENTRY == 0 && n_tim == n_off;
    long k;

    ix->n = 0;
    if ((k = push_entries(ix, off, tim, n, log_size)) < 0) return -1;
    if ((size_t)k < n_off) whole = 0;
    if (whole && sealed) {
        const unsigned char *f = tim + n_off * TK_TIDX_ENTRY;
        const tk_ientry *last = ix->n ? &ix->e[ix->n - 1] : NULL;
        seal->max_ts = (int64_t)tk_load64(f);
        seal->last_rel = tk_load32(f + 8);
        seal->log_size = tk_load32(f + 12);
        seal->log_crc = tk_load32(f + 16);
        if (!entry_crc_ok(f, 20) || (last && (seal->max_ts < last->max_ts ||
                                              seal->last_rel < last->rel)) ||
            seal->log_size != log_size)
            whole = 0;
    }
    return whole;
}

void tk_index_encode_off(const tk_index *ix, size_t from, size_t to, unsigned char *out) {
    for (size_t k = from; k < to; k++, out += TK_OIDX_ENTRY) {
        tk_store32(out, ix->e[k].rel);
        tk_store32(out + 4, ix->e[k].pos);
        seal_entry(out, 8);
    }
}

void tk_index_encode_time(const tk_index *ix, size_t from, size_t to, unsigned char *out) {
    for (size_t k = from; k < to; k++, out += TK_TIDX_ENTRY) {
        tk_store64(out, (uint64_t)ix->e[k].max_ts);
        tk_store32(out + 8, ix->e[k].rel);
        seal_entry(out, 12);
    }
}

void tk_index_encode_seal(unsigned char *out, const tk_seal *seal) {
    tk_store64(out, (uint64_t)seal->max_ts);
    tk_store32(out + 8, seal->last_rel);
    tk_store32(out + 12, seal->log_size);
    tk_store32(out + 16, seal->log_crc);
    seal_entry(out, 20);
}
