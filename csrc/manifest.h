/*
 * manifest.h -- the JSON files of a snapshot directory (docs/FORMAT.md):
 * each snapshot's manifest.json and the catalog snapshots.json.
 */
#ifndef TK_MANIFEST_H
#define TK_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "takhin.h"

typedef struct tk_mfile {
    char name[48];              /* a segment file name, nothing else */
    uint64_t size;
    uint32_t crc;               /* CRC32C of the whole file */
} tk_mfile;

typedef struct tk_manifest {
    tk_snapshot snap;
    tk_mfile *files;
    size_t nfiles;
    tk_cursor_info *cursors;    /* the log's cursors at the cut (malloc'd) */
    size_t ncursors;
} tk_manifest;

void tk_manifest_free(tk_manifest *m);

/* Written atomically and durably (temp, fsync, rename). */
tk_code tk_manifest_write(const char *path, const tk_manifest *m, tk_err *err);

/* NOT_FOUND when missing, CORRUPT when not a valid manifest. */
tk_code tk_manifest_read(const char *path, tk_manifest *m, tk_err *err);

/* Parses the JSON text [text, text + len) and calls fn(root, ud) while the
 * tree lives, with jansson kept from ever seeing a failed allocation (the
 * arena, manifest.c).  Returns fn's result; -1 with why filled when the
 * text does not parse, -2 when out of memory.  root is a json_t *. */
int tk_json_parse(const char *text, size_t len, int (*fn)(void *root, void *ud), void *ud,
                  char *why, size_t cap);

tk_code tk_catalog_write(const char *path, const tk_snapshot *snaps, size_t n, tk_err *err);
tk_code tk_catalog_read(const char *path, tk_snapshot **snaps, size_t *n, tk_err *err);

/* Deep copy (segment_offsets duplicated). */
int tk_snapshot_copy(tk_snapshot *dst, const tk_snapshot *src);

#endif
