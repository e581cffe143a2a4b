/*
 * archive.h -- the stream a snapshot travels in (docs/FORMAT.md, "The
 * archive"): a POSIX tar archive (ustar) of plain files, the whole stream
 * optionally compressed with zstd, written and read in bounded memory
 * whatever the size of the files.
 *
 * This module knows tar and zstd, not snapshots: which entries an archive
 * holds and what they mean is transfer.c's.  What it does guarantee a
 * reader, for every entry it hands out:
 *   - its header is a ustar header with a valid checksum;
 *   - it is a regular file ('0'): links, devices, FIFOs, directories, pax
 *     and GNU extension headers are refused (INVALID);
 *   - its name is one plain file name -- no '/', not "." or "..", no
 *     ustar prefix, NUL-terminated -- so it cannot name a path (INVALID);
 *   - its data and padding come exactly as the header says: a stream that
 *     ends early is CORRUPT, padding that is not zeros is CORRUPT;
 *   - the archive ends with two zero blocks, and after them only zeros
 *     (tar's record padding, at most 1 MiB) until the end of the stream:
 *     anything else, and an incomplete or damaged zstd frame, is CORRUPT.
 *
 * Writing:
 *
 *     tk_arc_writer_open(fd, level, size, "export <id>", &w, &err);  level 0: plain
 *     tk_arc_add(w, "manifest.json", len, mtime, &err);
 *     tk_arc_write(w, buf, len, &err);                  or, without a copy:
 *     tk_arc_space(w, &p, &n, &err); read(file, p, n); tk_arc_commit(w, got);
 *     tk_arc_end_entry(w, &err);                        pads to 512 bytes
 *     ...
 *     tk_arc_finish(w, &err);                           end marker, zstd epilogue
 *     tk_arc_writer_free(w);
 *
 * Reading:
 *
 *     tk_arc_reader_open(read_fn, ud, "import <path>", &r, &err);
 *     while (tk_arc_next(r, &entry, &end, &err) == TK_OK && !end)
 *         while (tk_arc_data(r, &p, &n, &err) == TK_OK && n > 0) use(p, n);
 *     tk_arc_reader_free(r);
 *
 * Memory: a writer holds a 1 MiB buffer (and, compressing, zstd's context
 * for the level: a few MiB at level 3, ~100 MiB at 19); a reader 1 MiB,
 * and, for a zstd stream, a window of at most 2^TK_ARC_WINDOW_LOG bytes (a
 * frame that asks for more is refused, INVALID).
 */
#ifndef TK_ARCHIVE_H
#define TK_ARCHIVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "takhin.h"

#define TK_ARC_BLOCK 512
#define TK_ARC_NAME_MAX 99              /* longest entry name (ustar: 100 with the NUL) */
#define TK_ARC_SIZE_LIMIT 077777777777ull   /* largest size a ustar header holds */
#define TK_ARC_LEVEL_MIN 1
#define TK_ARC_LEVEL_MAX 19
#define TK_ARC_LEVEL_DEFAULT 3
#define TK_ARC_WINDOW_LOG 24            /* zstd windows up to 16 MiB (levels 1-19 use <= 8) */

/* ------------------------------------------------------------------ */
/* Writing                                                              */
/* ------------------------------------------------------------------ */

typedef struct tk_arc_writer tk_arc_writer;

/* A writer on fd: plain tar when level is 0, else zstd at that level.
 * size, when not 0, is the exact number of tar bytes that will be
 * written (recorded in the zstd frame, which lets zstd size its tables
 * for small archives).  what names the operation in messages ("export
 * 1795626587719-a4ccb934 to /backup/x.tar"); it is copied. */
tk_code tk_arc_writer_open(int fd, int level, uint64_t size, const char *what,
                           tk_arc_writer **out, tk_err *err);

/* Starts an entry: a regular file of size bytes, modified at mtime
 * (seconds since the epoch).  INVALID for a name that is not a plain
 * file name of at most TK_ARC_NAME_MAX bytes, or a size above
 * TK_ARC_SIZE_LIMIT. */
tk_code tk_arc_add(tk_arc_writer *w, const char *name, uint64_t size, int64_t mtime,
                   tk_err *err);

/* Data of the current entry. */
tk_code tk_arc_write(tk_arc_writer *w, const void *buf, size_t len, tk_err *err);

/* Room for data of the current entry inside the writer's buffer (at least
 * one byte, at most what the entry still needs): fill *p with up to *n
 * bytes, then tk_arc_commit what was filled. */
tk_code tk_arc_space(tk_arc_writer *w, void **p, size_t *n, tk_err *err);
void tk_arc_commit(tk_arc_writer *w, size_t n);

/* Ends the current entry (INVALID when its data is not exactly the size
 * it was added with) and pads it to a whole block. */
tk_code tk_arc_end_entry(tk_arc_writer *w, tk_err *err);

/* The end-of-archive marker (two zero blocks), the end of the zstd frame,
 * everything written to fd. */
tk_code tk_arc_finish(tk_arc_writer *w, tk_err *err);

/* fd is a regular file, written from its start, that the caller will
 * fsync: start its writeback as the archive is written (tk_arc_writeback). */
void tk_arc_start_writeback(tk_arc_writer *w);

/* Bytes written to fd so far. */
uint64_t tk_arc_written(const tk_arc_writer *w);

/* Tar bytes of an entry of size bytes (header and padding included), and
 * of the end marker: what tk_arc_writer_open's size adds up. */
uint64_t tk_arc_entry_bytes(uint64_t size);
#define TK_ARC_END_BYTES (2 * TK_ARC_BLOCK)

void tk_arc_writer_free(tk_arc_writer *w);

/* ------------------------------------------------------------------ */
/* Reading                                                              */
/* ------------------------------------------------------------------ */

/* The source of a reader: up to cap bytes into buf; 0 at the end of the
 * stream, -1 with errno set on failure (EINTR is retried). */
typedef ssize_t (*tk_arc_read_fn)(void *ud, void *buf, size_t cap);

typedef struct tk_arc_reader tk_arc_reader;

typedef struct tk_arc_entry {
    char name[TK_ARC_NAME_MAX + 1];
    uint64_t size;
    int64_t mtime;
    unsigned index;                 /* 1 for the first entry of the archive */
} tk_arc_entry;

/* A reader on a source; whether the stream is zstd is seen from its first
 * bytes (a zstd frame's magic number).  what names the operation in
 * messages; it is copied. */
tk_code tk_arc_reader_open(tk_arc_read_fn fn, void *ud, const char *what,
                           tk_arc_reader **out, tk_err *err);

/* The next entry's header into *e, or *end = 1 at the end of the archive
 * (once the rest of the stream was checked: zeros only, the zstd frame
 * complete).  Data of the previous entry not read yet is skipped. */
tk_code tk_arc_next(tk_arc_reader *r, tk_arc_entry *e, int *end, tk_err *err);

/* The next piece of the current entry's data: *p and *n (valid until the
 * next call); *n == 0 once it is all read (and its padding checked). */
tk_code tk_arc_data(tk_arc_reader *r, const void **p, size_t *n, tk_err *err);

/* 1 when the stream is zstd-compressed (known after the first call). */
int tk_arc_compressed(const tk_arc_reader *r);

/* Bytes taken from the source so far. */
uint64_t tk_arc_consumed(const tk_arc_reader *r);

void tk_arc_reader_free(tk_arc_reader *r);

/* A tk_arc_read_fn over a file descriptor (ud points to the int). */
ssize_t tk_arc_read_fd(void *ud, void *buf, size_t cap);

/* ------------------------------------------------------------------ */
/* Writeback                                                            */
/* ------------------------------------------------------------------ */

/* Starts writing back bytes [*from, to) of fd to disk without waiting
 * (sync_file_range), once they are TK_ARC_WRITEBACK bytes or more, or, with
 * final, whatever there is; *from moves to `to`.  For files that are
 * fsynced when complete: their writeback then runs while the stream is
 * still being read, and the fsync has little left to wait for.  A hint:
 * its failure changes nothing (the fsync reports any error), so the call's
 * result is ignored and it needs no sys.h wrapper. */
#define TK_ARC_WRITEBACK (UINT64_C(8) << 20)
void tk_arc_writeback(int fd, uint64_t *from, uint64_t to, int final);

#endif
