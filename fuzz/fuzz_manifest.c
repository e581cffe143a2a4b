/*
 * fuzz_manifest.c -- the JSON readers of a snapshot directory.
 *
 * The input is written to a file that both tk_manifest_read (manifest.json)
 * and tk_catalog_read (snapshots.json) parse.  Neither may crash or leak
 * (LeakSanitizer checks every input).  When one accepts the file:
 *   - every file name passes tk_is_segment_file (names.h) and every id
 *     tk_snap_check_id: nothing read from disk can name a path outside the
 *     snapshot directory;
 *   - the fields are in range: base_offset >= 0, high_water_mark >=
 *     base_offset, one non-negative entry of segment_offsets per segment,
 *     strings terminated inside their arrays;
 *   - writing the result back (tk_manifest_write / tk_catalog_write) and
 *     reading that file gives the same values.
 */
#include "common.c"

#include "takhin.h"
#include "manifest.h"
#include "names.h"

static char in_path[PATH_MAX], out_path[PATH_MAX];

static void check_snapshot(const char *who, const tk_snapshot *s) {
    tk_err e;
    FZ_CHECK(memchr(s->id, 0, sizeof s->id) && memchr(s->label, 0, sizeof s->label),
             "%s: unterminated id or label", who);
    FZ_CHECK(tk_snap_check_id(s->id, &e) == TK_OK, "%s: accepted id '%s': %s", who, s->id, e.msg);
    FZ_CHECK(s->base_offset >= 0 && s->high_water_mark >= s->base_offset,
             "%s: offsets [%lld, %lld)", who, (long long)s->base_offset,
             (long long)s->high_water_mark);
    FZ_CHECK(s->mode == TK_SNAP_LINK || s->mode == TK_SNAP_COPY, "%s: mode %d", who, (int)s->mode);
    FZ_CHECK(s->num_segments == 0 || s->segment_offsets != NULL,
             "%s: %zu segments without offsets", who, s->num_segments);
    for (size_t i = 0; i < s->num_segments; i++)
        FZ_CHECK(s->segment_offsets[i] >= 0, "%s: segment offset %lld", who,
                 (long long)s->segment_offsets[i]);
}

static void same_snapshot(const tk_snapshot *a, const tk_snapshot *b) {
    FZ_CHECK(strcmp(a->id, b->id) == 0 && strcmp(a->label, b->label) == 0 &&
             a->timestamp == b->timestamp && a->base_offset == b->base_offset &&
             a->high_water_mark == b->high_water_mark && a->total_size == b->total_size &&
             a->mode == b->mode && a->num_segments == b->num_segments,
             "round trip changed snapshot '%s' (label '%s')", a->id, a->label);
    for (size_t i = 0; i < a->num_segments; i++)
        FZ_CHECK(a->segment_offsets[i] == b->segment_offsets[i],
                 "round trip changed segment offset %zu of '%s'", i, a->id);
}

static void fuzz_manifest(void) {
    tk_manifest m, m2;
    tk_err e;
    tk_code rc = tk_manifest_read(in_path, &m, &e);
    if (rc != TK_OK) {
        FZ_CHECK(rc == TK_CORRUPT, "manifest: %s: %s", tk_code_name(rc), e.msg);
        FZ_CHECK(m.files == NULL && m.snap.segment_offsets == NULL, "manifest: rejected but allocated");
        return;
    }
    check_snapshot("manifest", &m.snap);
    for (size_t i = 0; i < m.nfiles; i++) {
        FZ_CHECK(memchr(m.files[i].name, 0, sizeof m.files[i].name) &&
                 tk_is_segment_file(m.files[i].name),
                 "manifest: accepted file name '%.48s'", m.files[i].name);
        FZ_CHECK(!strchr(m.files[i].name, '/'), "manifest: file name '%s'", m.files[i].name);
    }
    rc = tk_manifest_write(out_path, &m, &e);
    FZ_CHECK(rc == TK_OK, "manifest: write back: %s", e.msg);
    rc = tk_manifest_read(out_path, &m2, &e);
    FZ_CHECK(rc == TK_OK, "manifest: read back: %s", e.msg);
    same_snapshot(&m.snap, &m2.snap);
    FZ_CHECK(m.nfiles == m2.nfiles, "manifest: round trip: %zu -> %zu files", m.nfiles, m2.nfiles);
    for (size_t i = 0; i < m.nfiles; i++)
        FZ_CHECK(strcmp(m.files[i].name, m2.files[i].name) == 0 &&
                 m.files[i].size == m2.files[i].size && m.files[i].crc == m2.files[i].crc,
                 "manifest: round trip changed file %zu (%s)", i, m.files[i].name);
    tk_manifest_free(&m);
    tk_manifest_free(&m2);
}

static void fuzz_catalog(void) {
    tk_snapshot *snaps = NULL, *snaps2 = NULL;
    size_t n = 0, n2 = 0;
    tk_err e;
    tk_code rc = tk_catalog_read(in_path, &snaps, &n, &e);
    if (rc != TK_OK) {
        FZ_CHECK(rc == TK_CORRUPT, "catalog: %s: %s", tk_code_name(rc), e.msg);
        return;
    }
    for (size_t i = 0; i < n; i++) check_snapshot("catalog", &snaps[i]);
    rc = tk_catalog_write(out_path, snaps, n, &e);
    FZ_CHECK(rc == TK_OK, "catalog: write back: %s", e.msg);
    rc = tk_catalog_read(out_path, &snaps2, &n2, &e);
    FZ_CHECK(rc == TK_OK && n2 == n, "catalog: read back: %zu -> %zu: %s", n, n2,
             rc == TK_OK ? "" : e.msg);
    for (size_t i = 0; i < n; i++) same_snapshot(&snaps[i], &snaps2[i]);
    tk_snapshot_list_free(snaps, n);
    tk_snapshot_list_free(snaps2, n2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!in_path[0]) {
        const char *root = fz_scratch("fuzz_manifest");
        snprintf(in_path, sizeof in_path, "%s/manifest.json", root);
        snprintf(out_path, sizeof out_path, "%s/written.json", root);
    }
    fz_write_file(in_path, data, size);
    fuzz_manifest();
    fuzz_catalog();
    return 0;
}
