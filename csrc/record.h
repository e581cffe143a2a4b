/*
 * record.h -- the framing of one record in a .log file (docs/FORMAT.md).
 *
 *   0 length u32 | 4 crc u32 | 8 magic u8 | 9 attrs u8 | 10 offset i64 |
 *   18 timestamp i64 | 26 key_len u32 | 30 value_len u32 | 34 key | value
 *
 * length counts the bytes after itself; the CRC32C covers bytes 8..end.
 */
#ifndef TK_RECORD_H
#define TK_RECORD_H

#include <stdint.h>
#include <string.h>

#include "takhin.h"

#define TK_REC_HEADER     34u       /* bytes before the key */
#define TK_REC_LEN_BASE   30u       /* length of a record with no key or value */
#define TK_REC_MAGIC      TK_FORMAT_VERSION
#define TK_ATTR_HAS_KEY   0x01u

typedef struct tk_rec_hdr {
    uint32_t length;
    uint32_t crc;
    uint8_t magic;
    uint8_t attrs;
    int64_t offset;
    int64_t timestamp;
    uint32_t key_len;
    uint32_t value_len;
} tk_rec_hdr;

static inline uint32_t tk_load32(const unsigned char *p) {
    uint32_t v; memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}
static inline uint64_t tk_load64(const unsigned char *p) {
    uint64_t v; memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}
static inline void tk_store32(unsigned char *p, uint32_t v) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    memcpy(p, &v, 4);
}
static inline void tk_store64(unsigned char *p, uint64_t v) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

/* Bytes a record with these key and value lengths takes on disk. */
static inline uint64_t tk_rec_size(size_t key_len, size_t value_len) {
    return (uint64_t)TK_REC_HEADER + key_len + value_len;
}

/* Frames one record into dst (tk_rec_size bytes). */
void tk_rec_encode(unsigned char *dst, int64_t offset, const tk_rec_in *r);

/* Decodes the header at p (TK_REC_HEADER bytes).  Returns 1 when it is
 * structurally sound -- magic, attributes, and a length that agrees with
 * the key and value lengths and stays under TK_MAX_RECORD_SIZE_LIMIT --
 * and 0 otherwise.  The CRC is not checked here. */
int tk_rec_decode_header(const unsigned char *p, tk_rec_hdr *h);

/* Total bytes of a decoded record. */
static inline uint64_t tk_rec_total(const tk_rec_hdr *h) { return 4u + (uint64_t)h->length; }

/* 1 when the CRC of the whole record at p matches. */
int tk_rec_crc_ok(const unsigned char *p, const tk_rec_hdr *h);

#endif
