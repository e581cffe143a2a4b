/*
 * manifest.c -- reading and writing manifest.json and snapshots.json with
 * jansson.  Every field read from disk is checked (type, range, names that
 * could escape the snapshot directory) before anything trusts it.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fs.h"
#include "cursors.h"
#include "manifest.h"
#include "names.h"
#include "sys.h"
#include "internal.h"

#define JSON_FORMAT 1

/* ------------------------------------------------------------------ */
/* jansson's memory                                                     */
/* ------------------------------------------------------------------ */

/* jansson (2.14) does not survive every allocation failure: its lexer
 * and its dumper ignore some, and then overrun a buffer or drop text
 * without saying so.  So no jansson call here may see one.  Around each
 * parse, build and dump, its allocations come from an arena taken up
 * front with one malloc (whose failure is a clean NOMEM), sized well past
 * what the document needs; only past that does it fall back to malloc.
 * Every object made in the arena is freed (a no-op) before it ends. */
typedef struct arena {
    unsigned char *base;
    size_t size, used;
} arena;

static _Thread_local arena *g_arena;

static void *json_alloc(size_t n) {
    arena *a = g_arena;
    if (a) {
        size_t need = (n + 15) & ~(size_t)15;
        if (need >= n && a->size - a->used >= need) {
            void *p = a->base + a->used;
            a->used += need;
            return p;
        }
    }
    return tk_malloc(n);
}

static void json_release(void *p) {
    arena *a = g_arena;
    if (a && (unsigned char *)p >= a->base && (unsigned char *)p < a->base + a->size) return;
    free(p);
}

static pthread_once_t json_once = PTHREAD_ONCE_INIT;
static void json_route(void) { json_set_alloc_funcs(json_alloc, json_release); }

__attribute__((noinline)) static int arena_begin(arena *a, size_t size) {
    pthread_once(&json_once, json_route);
    a->size = size;
    a->used = 0;
    if (!(a->base = tk_malloc(size))) return -1;
    g_arena = a;
    return 0;
}

static void arena_end(arena *a) {
    g_arena = NULL;
    free(a->base);
    a->base = NULL;
}

/* ------------------------------------------------------------------ */
/* Snapshots <-> JSON objects                                           */
/* ------------------------------------------------------------------ */

void tk_snapshot_free(tk_snapshot *snap) {
    if (!snap) return;
    free(snap->segment_offsets);
    snap->segment_offsets = NULL;
    snap->num_segments = 0;
}

void tk_snapshot_list_free(tk_snapshot *snaps, size_t n) {
    for (size_t i = 0; i < n; i++) tk_snapshot_free(&snaps[i]);
    free(snaps);
}

int tk_snapshot_copy(tk_snapshot *dst, const tk_snapshot *src) {
    *dst = *src;
    dst->segment_offsets = NULL;
    if (src->num_segments) {
        dst->segment_offsets = tk_malloc(src->num_segments * sizeof(int64_t));
        if (!dst->segment_offsets) return -1;
        memcpy(dst->segment_offsets, src->segment_offsets, src->num_segments * sizeof(int64_t));
    }
    return 0;
}

void tk_manifest_free(tk_manifest *m) {
    tk_snapshot_free(&m->snap);
    free(m->files);
    m->files = NULL;
    m->nfiles = 0;
    free(m->cursors);
    m->cursors = NULL;
    m->ncursors = 0;
}

/* A snapshot as JSON; NULL when out of memory.  A damaged snapshot (in
 * the catalog only) carries what is known of it. */
static json_t *snapshot_to_json(const tk_snapshot *s) {
    json_t *o = json_object(), *offs = json_array();
    int bad = !o || !offs;
    for (size_t i = 0; !bad && i < s->num_segments; i++)
        bad = json_array_append_new(offs, json_integer(s->segment_offsets[i])) < 0;
    bad = bad || json_object_set_new(o, "id", json_string(s->id)) < 0 ||
          json_object_set_new(o, "timestamp", json_integer(s->timestamp)) < 0 ||
          json_object_set_new(o, "total_size", json_integer((json_int_t)s->total_size)) < 0 ||
          (s->seq > 0 && json_object_set_new(o, "seq", json_integer(s->seq)) < 0);
    if (!bad && s->damaged) {
        json_decref(offs);
        if (json_object_set_new(o, "damaged", json_true()) < 0) { json_decref(o); return NULL; }
        return o;
    }
    bad = bad || json_object_set_new(o, "base_offset", json_integer(s->base_offset)) < 0 ||
          json_object_set_new(o, "high_water_mark", json_integer(s->high_water_mark)) < 0 ||
          json_object_set_new(o, "num_segments", json_integer((json_int_t)s->num_segments)) < 0 ||
          json_object_set(o, "segment_offsets", offs) < 0 ||
          json_object_set_new(o, "mode", json_string(s->mode == TK_SNAP_COPY ? "copy" : "link")) < 0 ||
          (s->label[0] && json_object_set_new(o, "label", json_string(s->label)) < 0);
    json_decref(offs);
    if (bad) { json_decref(o); return NULL; }
    return o;
}

static int get_int(json_t *o, const char *key, int64_t min, int64_t *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < min) return -1;
    *out = json_integer_value(v);
    return 0;
}

static int get_str(json_t *o, const char *key, char *out, size_t cap, int required) {
    json_t *v = json_object_get(o, key);
    if (!v && !required) { out[0] = '\0'; return 0; }
    if (!json_is_string(v) || json_string_length(v) >= cap ||
        strlen(json_string_value(v)) != json_string_length(v))
        return -1;
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

/* Fills s from o; -1 when any field is missing or out of range, -2 when
 * out of memory. */
static int snapshot_from_json(json_t *o, tk_snapshot *s) {
    int64_t v;
    char mode[8];
    json_t *offs;
    memset(s, 0, sizeof *s);
    if (!json_is_object(o)) return -1;
    if (get_str(o, "id", s->id, sizeof s->id, 1) < 0 || tk_snap_check_id(s->id, NULL) != TK_OK)
        return -1;
    if (json_object_get(o, "seq") && get_int(o, "seq", 1, &s->seq) < 0) return -1;
    if (json_is_true(json_object_get(o, "damaged"))) {
        s->damaged = 1;
        if (get_int(o, "timestamp", INT64_MIN, &s->timestamp) < 0 ||
            get_int(o, "total_size", 0, &v) < 0)
            return -1;
        s->total_size = (uint64_t)v;
        return 0;
    }
    if (get_str(o, "label", s->label, sizeof s->label, 0) < 0) return -1;
    if (get_str(o, "mode", mode, sizeof mode, 0) < 0) return -1;
    s->mode = strcmp(mode, "copy") == 0 ? TK_SNAP_COPY : TK_SNAP_LINK;
    if (get_int(o, "timestamp", INT64_MIN, &s->timestamp) < 0 ||
        get_int(o, "base_offset", 0, &s->base_offset) < 0 ||
        get_int(o, "high_water_mark", s->base_offset, &s->high_water_mark) < 0 ||
        get_int(o, "total_size", 0, &v) < 0)
        return -1;
    s->total_size = (uint64_t)v;
    if (get_int(o, "num_segments", 0, &v) < 0) return -1;
    offs = json_object_get(o, "segment_offsets");
    if (!json_is_array(offs) || json_array_size(offs) != (size_t)v) return -1;
    s->num_segments = (size_t)v;
    if (v > 0 && !(s->segment_offsets = tk_malloc((size_t)v * sizeof(int64_t)))) return -2;
    for (size_t i = 0; i < s->num_segments; i++) {
        json_t *e = json_array_get(offs, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0) { tk_snapshot_free(s); return -1; }
        s->segment_offsets[i] = json_integer_value(e);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Files                                                                */
/* ------------------------------------------------------------------ */

typedef struct outbuf {
    char *p;
    size_t len, cap;
} outbuf;

static int dump_to(const char *buf, size_t size, void *data) {
    outbuf *o = data;
    if (o->cap - o->len < size + 2) {
        size_t cap = o->cap ? o->cap : 4096;
        char *p;
        while (cap - o->len < size + 2) cap *= 2;
        if (!(p = tk_realloc(o->p, cap))) return -1;
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->len, buf, size);
    o->len += size;
    return 0;
}

/* Dumps root (made in arena a, which this ends) and writes it to path,
 * atomically.  root NULL: the build ran out of memory. */
static tk_code write_json(const char *path, json_t *root, arena *a, tk_err *err) {
    outbuf o = { NULL, 0, 0 };
    tk_code rc = TK_OK;
    int bad = !root || json_dump_callback(root, dump_to, &o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0;
    json_decref(root);
    arena_end(a);
    if (bad) {
        free(o.p);
        return tk_fail(err, TK_NOMEM, "write %s: out of memory", path);
    }
    o.p[o.len++] = '\n';
    if (tk_replace_file(path, o.p, o.len, 1) < 0)
        rc = tk_fail_errno(err, errno, "write %s", path);
    free(o.p);
    return rc;
}

/* Parses path into *root, made in arena a (begun here; the caller ends it
 * after json_decref).  On failure there is no arena to end. */
static tk_code load_json(const char *path, json_t **root, arena *a, tk_err *err) {
    json_error_t je;
    unsigned char *text;
    size_t len;
    if (tk_read_file(path, 64u << 20, &text, &len) < 0) {
        if (errno == EFBIG) return tk_fail(err, TK_CORRUPT, "read %s: larger than 64 MiB", path);
        return tk_fail_errno(err, errno, "read %s", path);
    }
    if (arena_begin(a, 16 * len + (64u << 10)) < 0) {
        free(text);
        return tk_fail(err, TK_NOMEM, "read %s: out of memory", path);
    }
    *root = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!*root) {
        arena_end(a);
        return tk_fail(err, TK_CORRUPT, "parse %s: %s (line %d)", path, je.text, je.line);
    }
    return TK_OK;
}

int tk_json_parse(const char *text, size_t len, int (*fn)(void *root, void *ud), void *ud,
                  char *why, size_t cap) {
    json_error_t je;
    json_t *root;
    arena a;
    int r;
    if (arena_begin(&a, 16 * len + (64u << 10)) < 0) return -2;
    if (!(root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je))) {
        arena_end(&a);
        snprintf(why, cap, "%s (line %d)", je.text, je.line);
        return -1;
    }
    r = fn(root, ud);
    json_decref(root);
    arena_end(&a);
    return r;
}

tk_code tk_manifest_write(const char *path, const tk_manifest *m, tk_err *err) {
    json_t *root, *files;
    arena a;
    int bad;
    if (arena_begin(&a, (m->nfiles + m->ncursors + m->snap.num_segments) * 512 + (64u << 10)) < 0)
        return tk_fail(err, TK_NOMEM, "write %s: out of memory", path);
    root = snapshot_to_json(&m->snap);
    files = json_array();
    bad = !root || !files;
    for (size_t i = 0; !bad && i < m->nfiles; i++) {
        char crc[9];
        snprintf(crc, sizeof crc, "%08" PRIx32, m->files[i].crc);
        bad = json_array_append_new(files, json_pack("{s:s, s:I, s:s}", "name", m->files[i].name,
                                                     "size", (json_int_t)m->files[i].size,
                                                     "crc32c", crc)) < 0;
    }
    bad = bad || json_object_set(root, "files", files) < 0;
    if (!bad && m->ncursors > 0) {
        json_t *cur = json_object();
        bad = !cur;
        for (size_t i = 0; !bad && i < m->ncursors; i++)
            bad = json_object_set_new(cur, m->cursors[i].name, json_integer(m->cursors[i].offset)) < 0;
        bad = bad || json_object_set_new(root, "cursors", cur) < 0;
    }
    bad = bad || json_object_set_new(root, "format", json_integer(JSON_FORMAT)) < 0;
    json_decref(files);
    if (bad) {
        json_decref(root);
        root = NULL;
    }
    return write_json(path, root, &a, err);
}

/* "cursors": { "name": offset, ... }, optional; names checked, offsets
 * inside the snapshot's range. */
static int cursors_from_json(json_t *o, tk_manifest *m) {
    const char *name;
    json_t *v;
    size_t i = 0;
    if (!o) return 0;
    if (!json_is_object(o) || json_object_size(o) > 1024) return -1;
    if (!(m->cursors = tk_calloc(json_object_size(o) + 1, sizeof *m->cursors))) return -2;
    json_object_foreach(o, name, v) {
        if (tk_cursor_check_name(name, NULL) != TK_OK || !json_is_integer(v) ||
            json_integer_value(v) < 0)
            return -1;
        snprintf(m->cursors[i].name, sizeof m->cursors[i].name, "%s", name);
        m->cursors[i++].offset = json_integer_value(v);
    }
    m->ncursors = i;
    return 0;
}

static int file_from_json(json_t *o, tk_mfile *f) {
    char crc[16], *end;
    int64_t size;
    unsigned long v;
    if (!json_is_object(o) || get_str(o, "name", f->name, sizeof f->name, 1) < 0 ||
        !tk_is_segment_file(f->name) || get_int(o, "size", 0, &size) < 0 ||
        get_str(o, "crc32c", crc, sizeof crc, 1) < 0 || strlen(crc) != 8)
        return -1;
    errno = 0;
    v = strtoul(crc, &end, 16);
    if (*end || errno) return -1;
    f->size = (uint64_t)size;
    f->crc = (uint32_t)v;
    return 0;
}

tk_code tk_manifest_read(const char *path, tk_manifest *m, tk_err *err) {
    json_t *root, *files, *format;
    arena a;
    int r = -1;
    tk_code rc = load_json(path, &root, &a, err);
    memset(m, 0, sizeof *m);
    if (rc != TK_OK) return rc;
    format = json_object_get(root, "format");
    if (!json_is_integer(format)) goto bad;
    if (json_integer_value(format) != JSON_FORMAT) {
        rc = tk_fail(err, TK_CORRUPT, "read %s: manifest format %" JSON_INTEGER_FORMAT " is not "
                     "supported (this takhin reads format %d)", path, json_integer_value(format),
                     JSON_FORMAT);
        json_decref(root);
        arena_end(&a);
        return rc;
    }
    files = json_object_get(root, "files");
    if (!json_is_array(files)) goto bad;
    if ((r = snapshot_from_json(root, &m->snap)) < 0) goto bad;
    r = -1;
    if (m->snap.damaged) goto bad;
    if ((r = cursors_from_json(json_object_get(root, "cursors"), m)) < 0) goto bad;
    m->nfiles = json_array_size(files);
    if (!(m->files = tk_calloc(m->nfiles ? m->nfiles : 1, sizeof *m->files))) { r = -2; goto bad; }
    r = -1;
    for (size_t i = 0; i < m->nfiles; i++)
        if (file_from_json(json_array_get(files, i), &m->files[i]) < 0) goto bad;
    json_decref(root);
    arena_end(&a);
    return TK_OK;
bad:
    json_decref(root);
    arena_end(&a);
    tk_manifest_free(m);
    if (r == -2) return tk_fail(err, TK_NOMEM, "read %s: out of memory", path);
    return tk_fail(err, TK_CORRUPT, "read %s: not a valid takhin manifest", path);
}

tk_code tk_catalog_write(const char *path, const tk_snapshot *snaps, size_t n, tk_err *err) {
    json_t *root, *arr;
    arena a;
    size_t segs = 0;
    int bad;
    for (size_t i = 0; i < n; i++) segs += snaps[i].num_segments;
    if (arena_begin(&a, n * 1024 + segs * 64 + (64u << 10)) < 0)
        return tk_fail(err, TK_NOMEM, "write %s: out of memory", path);
    root = json_object();
    arr = json_array();
    bad = !root || !arr;
    for (size_t i = 0; !bad && i < n; i++)
        bad = json_array_append_new(arr, snapshot_to_json(&snaps[i])) < 0;
    bad = bad || json_object_set_new(root, "format", json_integer(JSON_FORMAT)) < 0 ||
          json_object_set(root, "snapshots", arr) < 0;
    json_decref(arr);
    if (bad) {
        json_decref(root);
        root = NULL;
    }
    return write_json(path, root, &a, err);
}

tk_code tk_catalog_read(const char *path, tk_snapshot **out, size_t *n, tk_err *err) {
    json_t *root, *arr;
    tk_snapshot *snaps = NULL;
    size_t count = 0;
    arena a;
    int r = -1;
    tk_code rc = load_json(path, &root, &a, err);
    if (rc != TK_OK) return rc;
    arr = json_object_get(root, "snapshots");
    if (!json_is_array(arr)) goto bad;
    if (!(snaps = tk_calloc(json_array_size(arr) + 1, sizeof *snaps))) { r = -2; goto bad; }
    for (count = 0; count < json_array_size(arr); count++)
        if ((r = snapshot_from_json(json_array_get(arr, count), &snaps[count])) < 0) goto bad;
    json_decref(root);
    arena_end(&a);
    *out = snaps;
    *n = count;
    return TK_OK;
bad:
    json_decref(root);
    arena_end(&a);
    tk_snapshot_list_free(snaps, count);
    if (r == -2) return tk_fail(err, TK_NOMEM, "read %s: out of memory", path);
    return tk_fail(err, TK_CORRUPT, "read %s: not a valid snapshot catalog", path);
}
