/*
 * index.h -- a segment's sparse offset and time index, in memory.
 *
 * Entry k pairs the k-th .index entry (relative offset, position) with the
 * k-th .timeindex entry (largest timestamp so far, relative offset): both
 * files are written at the same moments, so they have the same number of
 * entries -- plus, in a sealed segment, one final .timeindex entry holding
 * the segment's largest timestamp (docs/FORMAT.md).
 */
#ifndef TK_INDEX_H
#define TK_INDEX_H

#include <stddef.h>
#include <stdint.h>

#define TK_OIDX_ENTRY 12u      /* rel u32, pos u32, crc u32 */
#define TK_TIDX_ENTRY 16u      /* max_ts i64, rel u32, crc u32 */
#define TK_SEAL_SIZE  24u      /* max_ts i64, last_rel u32, log_size u32, log_crc u32, crc u32 */

/* The trailer of a sealed segment's .timeindex: what the writer knew when
 * it sealed the segment.  log_crc (CRC32C of the whole .log) lets a
 * snapshot name a sealed file's checksum without reading it. */
typedef struct tk_seal {
    int64_t max_ts;
    uint32_t last_rel;
    uint32_t log_size;
    uint32_t log_crc;
} tk_seal;

typedef struct tk_ientry {
    uint32_t rel;           /* offset - base */
    uint32_t pos;           /* byte position in the .log */
    int64_t max_ts;         /* largest timestamp of records up to this one */
} tk_ientry;

typedef struct tk_index {
    tk_ientry *e;
    size_t n, cap;
} tk_index;

/* Writer-side bookkeeping that decides where entries go. */
typedef struct tk_idxstate {
    uint64_t since;         /* record bytes since the last entry */
    int64_t max_ts;         /* largest timestamp in the segment so far */
} tk_idxstate;

#define TK_TS_NONE INT64_MIN

void tk_index_free(tk_index *ix);
int tk_index_push(tk_index *ix, uint32_t rel, uint32_t pos, int64_t max_ts);
void tk_index_truncate(tk_index *ix, size_t n);

/* Index of the last entry with rel <= rel, or -1. */
long tk_index_floor_rel(const tk_index *ix, uint32_t rel);

/* Index of the last entry whose max_ts < ts, or -1. */
long tk_index_floor_ts_below(const tk_index *ix, int64_t ts);

/* Accounts one record of `size` bytes and timestamp ts; returns 1 when
 * this record gets an index entry (whose max_ts is st->max_ts after). */
int tk_idxstate_step(tk_idxstate *st, int64_t ts, uint64_t size, uint32_t interval);

/* Parses the bytes of a .index and a .timeindex into ix, keeping the
 * longest prefix of entries that is consistent: matching checksums,
 * increasing offsets and positions, positions below log_size, matching
 * relative offsets, and non-decreasing timestamps.  Returns 1 when every
 * byte of both files was accepted -- for a sealed segment that includes a
 * valid trailer, returned in *seal -- and 0 otherwise.  Allocation failure
 * returns -1. */
int tk_index_parse(tk_index *ix, const unsigned char *off, size_t off_len,
                   const unsigned char *tim, size_t tim_len, uint64_t log_size,
                   int sealed, tk_seal *seal);

/* Appends up to n entries of .index / .timeindex bytes that continue ix
 * consistently (the same checks as tk_index_parse), stopping quietly at
 * the first that does not.  -1 when out of memory. */
int tk_index_append_parsed(tk_index *ix, const unsigned char *off, const unsigned char *tim,
                           size_t n, uint64_t log_size);

/* Encodes entries [from, to) into .index / .timeindex bytes. */
void tk_index_encode_off(const tk_index *ix, size_t from, size_t to, unsigned char *out);
void tk_index_encode_time(const tk_index *ix, size_t from, size_t to, unsigned char *out);
void tk_index_encode_seal(unsigned char *out, const tk_seal *seal);

#endif
