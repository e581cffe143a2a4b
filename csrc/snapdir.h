/*
 * snapdir.h -- the inside of a snapshot directory, for modules that add
 * snapshots to it other ways than taking them (transfer.c: export and
 * import).  The protocol is snapshot.c's (its header comment): a snapshot
 * is built in a claimed .tmp-<id>, made durable, renamed into place, and
 * only then listed.
 */
#ifndef TK_SNAPDIR_H
#define TK_SNAPDIR_H

#include <stddef.h>

#include "manifest.h"
#include "takhin.h"

/* The manifest of snapshot id, checked as verify checks it (NOT_FOUND,
 * CORRUPT). */
tk_code tk_snap_read_manifest(tk_snapmgr *m, const char *id, tk_manifest *man, tk_err *err);

/* <snapshot dir>/snapshot-<id>/<file>. */
tk_code tk_snap_file_path(const tk_snapmgr *m, const char *id, const char *file, char *out,
                          size_t cap, tk_err *err);

/* Step 1 of an import: a new .tmp-<id> directory, claimed (*tmp_fd holds
 * its flock: a manager opening meanwhile leaves it alone).  EXISTS when
 * snapshot id is already there. */
tk_code tk_snap_import_begin(tk_snapmgr *m, const char *id, char *tmp, size_t cap,
                             int *tmp_fd, tk_err *err);

/* The last steps: man (its files already in tmp and checked) gets this
 * directory's next creation number, is written as tmp/manifest.json, tmp
 * is made durable, renamed to snapshot-<id> (EXISTS if another import of
 * the same id got there first) and listed.  On failure nothing is listed;
 * the caller removes tmp (tk_snap_import_abort). */
tk_code tk_snap_import_publish(tk_snapmgr *m, const char *tmp, tk_manifest *man, tk_err *err);

/* Removes tmp and lets its claim go. */
void tk_snap_import_abort(const char *tmp, int tmp_fd);

/* The manager's registry of background jobs (job.h): a job started there
 * is canceled and waited for when the manager closes. */
struct tk_jobs *tk_snap_jobs(tk_snapmgr *m);

#endif
