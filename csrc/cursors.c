/*
 * cursors.c -- consumer offsets (cursors.h).
 *
 * The file: a 256-byte header, then TK_CURSORS_SLOTS slots of 256 bytes.
 *
 *   header   0 magic "takhinCU"  8 version u32  12 slot size u32
 *            16 slots u32        20 crc u32 of bytes 0..19
 *   slot     0 name length u8 (0: never used)   8 name, 128 bytes, NUL padded
 *            136 copy A, 160 copy B:  seq u64 | offset i64 | live u32 | crc u32
 *            (crc: CRC32C of the name length, the name and the copy's seq,
 *            offset and live -- so a copy is never taken for another name's)
 *
 * Words that other processes read while a commit writes them are read and
 * written with atomic 8-byte accesses; little-endian hosts only, like the
 * rest of the format's in-memory handling here.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cursors.h"
#include "error.h"
#include "fault.h"
#include "fs.h"
#include "names.h"
#include "record.h"
#include "sys.h"
#include "internal.h"

#define MAGIC       "takhinCU"
#define VERSION     1u
#define HEADER      256u
#define SLOT        256u
#define NAME_AT     8u
#define COPY_AT     136u
#define COPY_SIZE   24u
#define FILE_SIZE   (HEADER + (size_t)TK_CURSORS_SLOTS * SLOT)

typedef struct copy {
    uint64_t seq;
    int64_t offset;
    uint32_t live;
    int valid;
} copy;

static unsigned char *slot_at(const tk_cursors *c, size_t i) {
    return c->map + HEADER + i * SLOT;
}

static uint64_t load64(const unsigned char *p) {
    return __atomic_load_n((const uint64_t *)(const void *)p, __ATOMIC_ACQUIRE);
}

static void store64(unsigned char *p, uint64_t v) {
    __atomic_store_n((uint64_t *)(void *)p, v, __ATOMIC_RELEASE);
}

/* The slot's name (len bytes, NUL terminated in out). */
static size_t slot_name(const unsigned char *slot, char *out) {
    uint64_t words[16];
    size_t len = load64(slot) & 0xff;
    for (int w = 0; w < 16; w++) words[w] = load64(slot + NAME_AT + 8 * w);
    if (len > TK_CURSOR_NAME_MAX) len = 0;
    memcpy(out, words, len);
    out[len] = '\0';
    return len;
}

static uint32_t copy_crc(const unsigned char *slot, uint64_t seq, int64_t offset, uint32_t live) {
    unsigned char buf[8 + 128 + 20];
    uint64_t words[17];
    for (int w = 0; w < 17; w++) words[w] = load64(slot + 8 * w);   /* length word + name */
    memcpy(buf, words, 136);
    tk_store64(buf + 136, seq);
    tk_store64(buf + 144, (uint64_t)offset);
    tk_store32(buf + 152, live);
    return tk_crc32c(0, buf, 156);
}

static copy read_copy(const unsigned char *slot, int which) {
    const unsigned char *p = slot + COPY_AT + (size_t)which * COPY_SIZE;
    uint64_t w2 = load64(p + 16);                   /* live | crc */
    copy k;
    k.seq = load64(p);
    k.offset = (int64_t)load64(p + 8);
    k.live = (uint32_t)w2;
    k.valid = k.seq > 0 && copy_crc(slot, k.seq, k.offset, k.live) == (uint32_t)(w2 >> 32);
    return k;
}

/* The current copy of a slot: the valid one with the larger sequence. */
static copy current(const unsigned char *slot, int *which) {
    copy a = read_copy(slot, 0), b = read_copy(slot, 1);
    int w = !a.valid || (b.valid && b.seq > a.seq);
    if (which) *which = w;
    return w ? b : a;
}

static void write_copy(unsigned char *slot, int which, uint64_t seq, int64_t offset,
                       uint32_t live) {
    unsigned char *p = slot + COPY_AT + (size_t)which * COPY_SIZE;
    uint32_t crc = copy_crc(slot, seq, offset, live);
    store64(p + 16, 0);                             /* invalid while it changes */
    store64(p, seq);
    TK_FAULT("cursor.writing");
    store64(p + 8, (uint64_t)offset);
    store64(p + 16, (uint64_t)live | ((uint64_t)crc << 32));
}

/* ------------------------------------------------------------------ */
/* The file                                                             */
/* ------------------------------------------------------------------ */

static void make_header(unsigned char *h) {
    memset(h, 0, HEADER);
    memcpy(h, MAGIC, 8);
    tk_store32(h + 8, VERSION);
    tk_store32(h + 12, SLOT);
    tk_store32(h + 16, TK_CURSORS_SLOTS);
    tk_store32(h + 20, tk_crc32c(0, h, 20));
}

static int header_ok(const unsigned char *h) {
    return memcmp(h, MAGIC, 8) == 0 && tk_load32(h + 8) == VERSION &&
           tk_load32(h + 12) == SLOT && tk_load32(h + 16) == TK_CURSORS_SLOTS &&
           tk_load32(h + 20) == tk_crc32c(0, h, 20);
}

static tk_code map_file(tk_cursors *c, const char *path, int writable, tk_err *err) {
    struct stat st;
    void *p;
    if (fstat(c->fd, &st) < 0) return tk_fail_errno(err, errno, "stat %s", path);
    if ((size_t)st.st_size < FILE_SIZE)
        return tk_fail(err, TK_CORRUPT, "open %s: %lld bytes, a cursor file has %zu", path,
                       (long long)st.st_size, FILE_SIZE);
    p = mmap(NULL, FILE_SIZE, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, c->fd, 0);
    if (p == MAP_FAILED) return tk_fail_errno(err, errno, "map %s", path);
    if (!header_ok(p)) {
        munmap(p, FILE_SIZE);
        return tk_fail(err, TK_CORRUPT, "open %s: not a takhin cursor file (or another "
                       "version of it)", path);
    }
    c->map = p;
    c->writable = writable;
    return TK_OK;
}

/* A new file, made whole under a temporary name and renamed into place:
 * nobody ever maps a half-made one. */
static tk_code create_file(const char *dir, const char *path, const unsigned char *body,
                           size_t len, tk_err *err) {
    unsigned char *buf = tk_calloc(1, FILE_SIZE);
    int rc;
    if (!buf) return tk_fail(err, TK_NOMEM, "create %s: out of memory", path);
    make_header(buf);
    if (body) memcpy(buf + HEADER, body, len);
    rc = tk_replace_file(path, buf, FILE_SIZE, 1);
    free(buf);
    (void)dir;
    if (rc < 0) return tk_fail_errno(err, errno, "create %s", path);
    return TK_OK;
}

tk_code tk_cursors_open(const char *dir, int writer, tk_cursors *c, tk_err *err) {
    char path[PATH_MAX];
    tk_code rc;
    c->map = NULL;
    c->fd = -1;
    c->writable = 0;
    if (tk_path_join(path, sizeof path, dir, TK_CURSORS_FILE) < 0)
        return tk_fail_errno(err, errno, "open %s", dir);
    c->fd = tk_open(path, (writer ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW, 0);
    if (c->fd < 0 && errno == ENOENT) {
        if (!writer) return TK_OK;                  /* no cursors yet */
        if ((rc = create_file(dir, path, NULL, 0, err)) != TK_OK) return rc;
        c->fd = tk_open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
    }
    if (c->fd < 0) return tk_fail_errno(err, errno, "open %s", path);
    if ((rc = map_file(c, path, writer, err)) != TK_OK) {
        close(c->fd);
        c->fd = -1;
    }
    return rc;
}

void tk_cursors_close(tk_cursors *c) {
    if (c->map) munmap(c->map, FILE_SIZE);
    if (c->fd >= 0) close(c->fd);
    c->map = NULL;
    c->fd = -1;
}

void tk_cursors_refresh(const char *dir, tk_cursors *c) {
    tk_err scratch;
    if (!c->map) tk_cursors_open(dir, 0, c, &scratch);
}

/* The slot holding name (live or not), or -1; *free_slot gets the first
 * slot that holds no live cursor. */
static long find(const tk_cursors *c, const char *name, long *free_slot) {
    char buf[TK_CURSOR_NAME_MAX + 1];
    if (free_slot) *free_slot = -1;
    for (size_t i = 0; c->map && i < TK_CURSORS_SLOTS; i++) {
        const unsigned char *s = slot_at(c, i);
        size_t len = slot_name(s, buf);
        copy k;
        if (len == 0) {                     /* never used: the rest are too */
            if (free_slot && *free_slot < 0) *free_slot = (long)i;
            break;
        }
        k = current(s, NULL);
        if (k.valid && k.live && strcmp(buf, name) == 0) return (long)i;
        if (free_slot && *free_slot < 0 && !(k.valid && k.live)) *free_slot = (long)i;
    }
    return -1;
}

int tk_cursors_get(const tk_cursors *c, const char *name, int64_t *offset) {
    long i = find(c, name, NULL);
    if (i < 0) return 0;
    *offset = current(slot_at(c, (size_t)i), NULL).offset;
    return 1;
}

static tk_code finish(tk_cursors *c, const char *dir, int durable, tk_err *err) {
    if (durable && tk_fdatasync(c->fd) < 0)
        return tk_fail_errno(err, errno, "fsync %s/" TK_CURSORS_FILE, dir);
    return TK_OK;
}

tk_code tk_cursors_put(tk_cursors *c, const char *dir, const char *name, int64_t offset,
                       int durable, tk_err *err) {
    long free_slot, i = find(c, name, &free_slot);
    unsigned char *s;
    int which = 0;
    copy k;
    if (!c->map || !c->writable) return tk_fail(err, TK_READONLY, "commit %s: read-only", dir);
    if (i < 0) {
        size_t len = strlen(name);
        uint64_t words[16] = { 0 };
        if (free_slot < 0)
            return tk_fail(err, TK_FULL, "commit %s: all %d cursor slots of %s/" TK_CURSORS_FILE
                           " are used; delete a cursor first", name, TK_CURSORS_SLOTS, dir);
        i = free_slot;
        s = slot_at(c, (size_t)i);
        k = current(s, &which);
        memcpy(words, name, len);
        /* A new name makes both copies invalid (their CRC covers the
         * name); the one written below is the only valid one. */
        store64(s, len);
        for (int w = 0; w < 16; w++) store64(s + NAME_AT + 8 * w, words[w]);
        TK_FAULT("cursor.named");
    } else {
        s = slot_at(c, (size_t)i);
        k = current(s, &which);
    }
    write_copy(s, !which, (k.valid ? k.seq : 0) + 1, offset, 1);
    TK_FAULT("cursor.written");
    return finish(c, dir, durable, err);
}

tk_code tk_cursors_remove(tk_cursors *c, const char *dir, const char *name, int durable,
                          int *found, tk_err *err) {
    long i = find(c, name, NULL);
    int which;
    copy k;
    *found = i >= 0;
    if (i < 0) return TK_OK;
    if (!c->writable) return tk_fail(err, TK_READONLY, "delete_cursor %s: read-only", dir);
    k = current(slot_at(c, (size_t)i), &which);
    write_copy(slot_at(c, (size_t)i), !which, k.seq + 1, k.offset, 0);
    return finish(c, dir, durable, err);
}

size_t tk_cursors_list(const tk_cursors *c, tk_cursor_info *out, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; c->map && i < TK_CURSORS_SLOTS; i++) {
        const unsigned char *s = slot_at(c, i);
        tk_cursor_info info;
        copy k;
        if (slot_name(s, info.name) == 0) break;
        k = current(s, NULL);
        if (!k.valid || !k.live) continue;
        info.offset = k.offset;
        if (n < cap) out[n] = info;
        n++;
    }
    return n;
}

tk_code tk_cursors_write(const char *dir, const tk_cursor_info *list, size_t n, tk_err *err) {
    char path[PATH_MAX];
    unsigned char *body;
    tk_code rc;
    if (tk_path_join(path, sizeof path, dir, TK_CURSORS_FILE) < 0)
        return tk_fail_errno(err, errno, "write %s", dir);
    if (n > TK_CURSORS_SLOTS)
        return tk_fail(err, TK_INVALID, "write %s: %zu cursors, at most %d", path, n,
                       TK_CURSORS_SLOTS);
    if (!(body = tk_calloc(TK_CURSORS_SLOTS, SLOT)))
        return tk_fail(err, TK_NOMEM, "write %s: out of memory", path);
    for (size_t i = 0; i < n; i++) {
        unsigned char *s = body + i * SLOT;
        size_t len = strlen(list[i].name);
        s[0] = (unsigned char)len;
        memcpy(s + NAME_AT, list[i].name, len);
        write_copy(s, 0, 1, list[i].offset, 1);
    }
    rc = create_file(dir, path, body, (size_t)TK_CURSORS_SLOTS * SLOT, err);
    free(body);
    return rc;
}
