/*
 * record.c -- framing and checking records.
 */
#include "record.h"
#include "internal.h"

void tk_rec_encode(unsigned char *dst, int64_t offset, const tk_rec_in *r) {
    size_t klen = r->has_key ? r->key_len : 0;
    uint32_t length = (uint32_t)(TK_REC_LEN_BASE + klen + r->value_len);
    tk_store32(dst, length);
    dst[8] = TK_REC_MAGIC;
    dst[9] = r->has_key ? TK_ATTR_HAS_KEY : 0;
    tk_store64(dst + 10, (uint64_t)offset);
    tk_store64(dst + 18, (uint64_t)r->timestamp);
    tk_store32(dst + 26, (uint32_t)klen);
    tk_store32(dst + 30, (uint32_t)r->value_len);
    if (klen) memcpy(dst + TK_REC_HEADER, r->key, klen);
    if (r->value_len) memcpy(dst + TK_REC_HEADER + klen, r->value, r->value_len);
    tk_store32(dst + 4, tk_crc32c(0, dst + 8, length - 4));
}

int tk_rec_decode_header(const unsigned char *p, tk_rec_hdr *h) {
    h->length = tk_load32(p);
    h->crc = tk_load32(p + 4);
    h->magic = p[8];
    h->attrs = p[9];
    h->offset = (int64_t)tk_load64(p + 10);
    h->timestamp = (int64_t)tk_load64(p + 18);
    h->key_len = tk_load32(p + 26);
    h->value_len = tk_load32(p + 30);
    if (h->magic != TK_REC_MAGIC) return 0;
    if (h->attrs & ~TK_ATTR_HAS_KEY) return 0;
    if (h->length < TK_REC_LEN_BASE || h->length > TK_MAX_RECORD_SIZE_LIMIT) return 0;
    if ((uint64_t)TK_REC_LEN_BASE + h->key_len + h->value_len != h->length) return 0;
    if (!(h->attrs & TK_ATTR_HAS_KEY) && h->key_len != 0) return 0;
    if (h->offset < 0) return 0;
    return 1;
}

int tk_rec_crc_ok(const unsigned char *p, const tk_rec_hdr *h) {
    return tk_crc32c(0, p + 8, h->length - 4) == h->crc;
}
