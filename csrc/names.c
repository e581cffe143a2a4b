/*
 * names.c -- on-disk names and their parsing (names.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "names.h"
#include "internal.h"

const char *const tk_ext_name[TK_EXT_COUNT] = { ".log", ".index", ".timeindex" };

static int fits(int n, size_t cap) {
    if (n < 0 || (size_t)n >= cap) { errno = ENAMETOOLONG; return -1; }
    return 0;
}

int tk_seg_name(char *out, size_t cap, int64_t base, tk_ext ext) {
    return fits(snprintf(out, cap, "%020" PRId64 "%s", base, tk_ext_name[ext]), cap);
}

int tk_seg_path(char *out, size_t cap, const char *dir, int64_t base, tk_ext ext) {
    return fits(snprintf(out, cap, "%s/%020" PRId64 "%s", dir, base, tk_ext_name[ext]), cap);
}

int tk_parse_seg_name(const char *name, int64_t *base, tk_ext *ext) {
    int64_t v = 0;
    int e;
    for (int i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9') return 0;
        if (v > (INT64_MAX - (name[i] - '0')) / 10) return 0;
        v = v * 10 + (name[i] - '0');
    }
    for (e = 0; e < TK_EXT_COUNT && strcmp(name + 20, tk_ext_name[e]) != 0; e++) {}
    if (e == TK_EXT_COUNT) return 0;
    /* Offsets inside a segment are base + uint32: keep that from overflowing. */
    if (v > INT64_MAX - ((int64_t)1 << 33)) return 0;
    if (base) *base = v;
    if (ext) *ext = (tk_ext)e;
    return 1;
}

int tk_is_segment_file(const char *name) {
    return tk_parse_seg_name(name, NULL, NULL);
}

int tk_is_log_data_file(const char *name) {
    return tk_is_segment_file(name) || strcmp(name, TK_START_FILE) == 0 ||
           strcmp(name, TK_CURSORS_FILE) == 0;
}

int tk_is_log_leftover(const char *name) {
    size_t n = strlen(name), t = strlen(TK_TMP_SUFFIX);
    if (strncmp(name, TK_RESTORE_TMP, strlen(TK_RESTORE_TMP)) == 0) return 1;
    return n > t && strcmp(name + n - t, TK_TMP_SUFFIX) == 0 &&
           (name[0] == '.' || (name[0] >= '0' && name[0] <= '9'));
}

int tk_snapdir_path(char *out, size_t cap, const char *snapdir, const char *prefix,
                 const char *id, const char *file) {
    int n = file ? snprintf(out, cap, "%s/%s%s/%s", snapdir, prefix, id, file)
                 : snprintf(out, cap, "%s/%s%s", snapdir, prefix, id);
    return fits(n, cap);
}

int tk_restore_tmp_path(char *out, size_t cap, const char *parent, const char *name,
                        const char *id, uint32_t rand) {
    return fits(snprintf(out, cap, "%s/.%s.restore-%s-%08" PRIx32, parent, name, id, rand), cap);
}

/* The characters of snapshot ids and cursor names: safe in a file name,
 * a URL and a shell word. */
static int name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
}

/* The first character of s that name_char refuses, or 0. */
static char bad_char(const char *s) {
    for (; *s; s++)
        if (!name_char(*s)) return *s;
    return 0;
}

tk_code tk_cursor_check_name(const char *name, tk_err *err) {
    size_t n = name ? strlen(name) : 0;
    char c;
    if (n == 0 || n > TK_CURSOR_NAME_MAX)
        return tk_fail(err, TK_INVALID, "cursor name '%.140s' must be 1 to %d bytes",
                       name ? name : "", TK_CURSOR_NAME_MAX);
    if ((c = bad_char(name)) != 0)
        return tk_fail(err, TK_INVALID, "cursor name '%s' holds '%c': only letters, digits, "
                       "'-', '_' and '.' are allowed", name, c);
    return TK_OK;
}

tk_code tk_snap_check_id(const char *id, tk_err *err) {
    size_t n = id ? strlen(id) : 0;
    char c;
    if (n == 0) return tk_fail(err, TK_INVALID, "snapshot id is empty");
    if (n >= TK_SNAP_ID_MAX)
        return tk_fail(err, TK_INVALID, "snapshot id '%.80s' is longer than %d bytes", id,
                       TK_SNAP_ID_MAX - 1);
    if (id[0] == '.' || strstr(id, ".."))
        return tk_fail(err, TK_INVALID, "snapshot id '%s' may not start with '.' or hold '..'", id);
    if ((c = bad_char(id)) != 0)
        return tk_fail(err, TK_INVALID, "snapshot id '%s' holds '%c': only letters, "
                       "digits, '-', '_' and '.' are allowed", id, c);
    return TK_OK;
}
