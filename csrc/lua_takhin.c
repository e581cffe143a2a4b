/*
 * lua_takhin.c -- the Lua binding: takhin.core.
 *
 * A thin layer over takhin.h.  Conventions (as Lua's liolib.c):
 *   - misuse raises: wrong argument types, unknown option names, any call
 *     on a closed object;
 *   - the outside world failing returns nil, message, CODE.
 * Objects are full userdata created already "closed" (NULL handle) and
 * given their metatable first; only then is the engine called, so a
 * failure at any step leaks nothing: __gc owns whatever was opened.
 * close, __gc and __close share one quiet path that never raises.
 *
 * Two rules keep Lua's memory and the engine's apart:
 *   - Every string the engine is handed stays referenced until the engine
 *     is done with it: option values are read with lua_getfield (so
 *     __index runs, and proxy tables work) and left on the stack, or
 *     anchored in a table, never popped first.
 *   - A call that runs Lua code (a progress callback) marks the objects
 *     it uses busy; closing one of them from inside raises instead of
 *     freeing what the engine is using.  (They cannot be collected: they
 *     are on the call's stack.)
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"

#include "compat.h"
#include "takhin.h"

#ifdef TK_FAULT_INJECTION
#include <errno.h>
#include "sys.h"
#endif

#define LOG_MT  "takhin.Log"
#define ITER_MT "takhin.Iter"
#define SM_MT   "takhin.SnapshotManager"
#define JOB_MT  "takhin.Job"

#define TRIM_ABOVE (1u << 20)       /* read buffers larger than this are freed after use */

#if defined(__GNUC__)
#define TK_EXPORT __attribute__((visibility("default")))
#else
#define TK_EXPORT
#endif

typedef struct lua_log {
    tk_log *log;                /* NULL once closed */
    tk_record rec;              /* reused by read() */
    int busy;                   /* calls in progress that run Lua code */
    int close_pending;          /* collected while a job used it: the job closes it */
} lua_log;

typedef struct lua_sm {
    tk_snapmgr *mgr;            /* NULL once closed */
    int busy;
} lua_sm;

typedef struct lua_iter {
    tk_iter *it;                /* NULL once finished */
} lua_iter;

/* A background job.  Its uservalue table keeps the manager (and, for a
 * create, the log) alive while the job lives; the job's thread never sees
 * the Lua state. */
typedef struct lua_job {
    tk_job *job;                /* NULL once released */
    lua_log *log;               /* create: the log it snapshots */
} lua_job;

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static int push_error(lua_State *L, const tk_err *e) {
    lua_pushnil(L);
    lua_pushstring(L, e->msg);
    lua_pushstring(L, tk_code_name(e->code));
    return 3;
}

static int push_fail(lua_State *L, tk_code code, const char *msg) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, tk_code_name(code));
    return 3;
}

static int push_invalid(lua_State *L, const char *msg) {
    return push_fail(L, TK_INVALID, msg);
}

static lua_log *check_log(lua_State *L, int idx) {
    lua_log *u = (lua_log *)luaL_checkudata(L, idx, LOG_MT);
    if (!u->log) luaL_error(L, "attempt to use a closed takhin.Log");
    return u;
}

static lua_sm *check_sm(lua_State *L, int idx) {
    lua_sm *u = (lua_sm *)luaL_checkudata(L, idx, SM_MT);
    if (!u->mgr) luaL_error(L, "attempt to use a closed takhin.SnapshotManager");
    return u;
}

static const char *check_string(lua_State *L, int idx, size_t *len) {
    if (lua_type(L, idx) != LUA_TSTRING) compat_typeerror(L, idx, "string");
    return lua_tolstring(L, idx, len);
}

/* A string argument that the engine takes as a C string: NULL when it
 * holds a NUL byte (the caller returns INVALID). */
static const char *check_cstring(lua_State *L, int idx) {
    size_t len;
    const char *s = check_string(L, idx, &len);
    return strlen(s) == len ? s : NULL;
}

/* Rejects keys of table t that are not in names (luaposix's
 * checkfieldnames): a typo is an error, not a silent default. */
static void check_field_names(lua_State *L, int t, const char *what,
                              const char *const names[]) {
    lua_pushnil(L);
    while (lua_next(L, t)) {                            /* stack: key, value */
        int known = 0;
        lua_pop(L, 1);                                  /* stack: key */
        if (lua_type(L, -1) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -1);
            for (int i = 0; names[i]; i++)
                if (strcmp(k, names[i]) == 0) { known = 1; break; }
        }
        if (!known) {
            const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                           : luaL_typename(L, -1);
            luaL_error(L, "%s: unknown option '%s'", what, k);
        }
    }
}

/* Reads an optional integer field of table t. */
static int field_int(lua_State *L, int t, const char *name, int64_t *out) {
    int present;
    lua_getfield(L, t, name);
    present = !lua_isnil(L, -1);
    if (present) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "option '%s': integer expected, got %s", name, luaL_typename(L, -1));
        if (!compat_toint64(L, -1, out))
            luaL_error(L, "option '%s': number has no exact integer representation", name);
    }
    lua_pop(L, 1);
    return present;
}

/* Reads an optional boolean field of table t (absent: false). */
static int field_bool(lua_State *L, int t, const char *name) {
    int v;
    lua_getfield(L, t, name);
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN)
        luaL_error(L, "option '%s': boolean expected, got %s", name, luaL_typename(L, -1));
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* Reads an optional string field of table t and LEAVES IT ON THE STACK
 * (nil when absent), so the string stays alive while the engine uses it:
 * a proxy table's __index may have made it up.  *bad is set when it
 * holds a NUL byte. */
static const char *field_string(lua_State *L, int t, const char *name, int *bad) {
    size_t len;
    const char *s;
    lua_getfield(L, t, name);                           /* stays on the stack */
    if (lua_isnil(L, -1)) return NULL;
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "option '%s': string expected, got %s", name, luaL_typename(L, -1));
    s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len) *bad = 1;
    return s;
}

/* ------------------------------------------------------------------ */
/* open_log                                                             */
/* ------------------------------------------------------------------ */

static const char *const log_opt_names[] = {
    "dir", "max_segment_size", "index_interval_bytes", "max_record_size", "sync",
    "readonly", "shared", "max_open_segments", "retention", "sync_interval_ms", NULL
};

/* takhin/init.lua turns retention.max_age (a duration) into max_age_ms. */
static const char *const retention_opt_names[] = {
    "max_bytes", "max_age_ms", "discard", "keep_uncommitted", NULL
};

/* The retention sub-table; NULL or an INVALID message. */
static const char *read_retention(lua_State *L, int t, tk_log_opts *o, char *buf, size_t cap) {
    int64_t v;
    int bad = 0, r;
    const char *s;
    lua_getfield(L, t, "retention");                    /* stack: ..., retention (kept) */
    if (lua_isnil(L, -1)) { lua_pop(L, 1); return NULL; }
    if (lua_type(L, -1) != LUA_TTABLE)
        luaL_error(L, "option 'retention': table expected, got %s", luaL_typename(L, -1));
    r = lua_gettop(L);
    check_field_names(L, r, "open_log: retention", retention_opt_names);
    if (field_int(L, r, "max_bytes", &v)) {
        if (v < 1) {
            snprintf(buf, cap, "open_log: retention max_bytes %lld must be >= 1", (long long)v);
            return buf;
        }
        o->retention_max_bytes = (uint64_t)v;
    }
    if (field_int(L, r, "max_age_ms", &v)) {
        if (v < 0) return "open_log: retention max_age must be >= 0";
        o->retention_max_age_ms = v;
    }
    s = field_string(L, r, "discard", &bad);            /* stack: ..., retention, discard */
    if (s && strcmp(s, "new") == 0) o->retention_discard_new = 1;
    else if (s && strcmp(s, "old") != 0) {
        snprintf(buf, cap, "open_log: retention discard must be \"old\" or \"new\", not \"%.40s\"", s);
        return buf;
    }
    if (o->retention_discard_new && !o->retention_max_bytes)
        return "open_log: retention discard = \"new\" needs max_bytes";
    o->retention_keep_uncommitted = field_bool(L, r, "keep_uncommitted");
    lua_pop(L, 2);
    return NULL;
}

/* Fills o from the options table; returns NULL or an INVALID message. */
static const char *read_log_opts(lua_State *L, int t, tk_log_opts *o, char *buf, size_t cap) {
    int64_t v;
    int bad = 0, readonly, shared;
    const char *s;
    check_field_names(L, t, "open_log", log_opt_names);
    if (field_int(L, t, "max_segment_size", &v)) {
        if (v < 1 || v > TK_MAX_SEGMENT_SIZE_LIMIT) {
            snprintf(buf, cap, "open_log: max_segment_size %lld is outside 1 .. %u",
                     (long long)v, TK_MAX_SEGMENT_SIZE_LIMIT);
            return buf;
        }
        o->max_segment_size = (uint64_t)v;
    }
    if (field_int(L, t, "index_interval_bytes", &v)) {
        if (v < 1 || v > UINT32_MAX) {
            snprintf(buf, cap, "open_log: index_interval_bytes %lld is outside 1 .. %u",
                     (long long)v, UINT32_MAX);
            return buf;
        }
        o->index_interval_bytes = (uint32_t)v;
    }
    if (field_int(L, t, "max_record_size", &v)) {
        if (v < 64 || v > TK_MAX_RECORD_SIZE_LIMIT) {
            snprintf(buf, cap, "open_log: max_record_size %lld is outside 64 .. %u",
                     (long long)v, TK_MAX_RECORD_SIZE_LIMIT);
            return buf;
        }
        o->max_record_size = (uint32_t)v;
    }
    if (field_int(L, t, "max_open_segments", &v)) {
        if (v < 1 || v > 1000000) {
            snprintf(buf, cap, "open_log: max_open_segments %lld is outside 1 .. 1000000",
                     (long long)v);
            return buf;
        }
        o->max_open_segments = (uint32_t)v;
    }
    s = field_string(L, t, "sync", &bad);
    if (s) {
        if (strcmp(s, "none") == 0) o->sync = TK_SYNC_NONE;
        else if (strcmp(s, "always") == 0) o->sync = TK_SYNC_ALWAYS;
        else if (strcmp(s, "interval") == 0) o->sync = TK_SYNC_INTERVAL;
        else {
            snprintf(buf, cap, "open_log: sync must be \"none\", \"always\" or \"interval\", "
                     "not \"%.40s\"", s);
            lua_pop(L, 1);
            return buf;
        }
    }
    lua_pop(L, 1);
    if (field_int(L, t, "sync_interval_ms", &v)) {
        if (v < 1 || v > 3600000) {
            snprintf(buf, cap, "open_log: sync_interval %lld ms is outside 1 ms .. 1 h", (long long)v);
            return buf;
        }
        o->sync_interval_ms = (uint32_t)v;
    }
    readonly = field_bool(L, t, "readonly");
    shared = field_bool(L, t, "shared");
    if (readonly && shared) return "open_log: shared and readonly exclude each other";
    o->mode = readonly ? TK_LOG_READONLY : shared ? TK_LOG_SHARED : TK_LOG_EXCLUSIVE;
    return read_retention(L, t, o, buf, cap);
}

static int l_open_log(lua_State *L) {
    tk_log_opts o;
    tk_err e;
    char msg[256];
    const char *bad, *dir;
    size_t dlen;
    lua_log *u;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    tk_log_opts_init(&o);
    lua_getfield(L, 1, "dir");                          /* stack: opts, dir (kept) */
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "open_log: option 'dir' (string) is required");
    dir = lua_tolstring(L, 2, &dlen);
    if (strlen(dir) != dlen) return push_invalid(L, "open_log: dir contains a NUL byte");
    if ((bad = read_log_opts(L, 1, &o, msg, sizeof msg)) != NULL) return push_invalid(L, bad);
    u = (lua_log *)lua_newuserdata(L, sizeof *u);      /* stack: opts, dir, log */
    memset(u, 0, sizeof *u);
    luaL_setmetatable(L, LOG_MT);
    if (tk_log_open(dir, &o, &u->log, &e) != TK_OK) return push_error(L, &e);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Log: writing                                                         */
/* ------------------------------------------------------------------ */

static int l_append(lua_State *L) {
    lua_log *u = check_log(L, 1);
    tk_rec_in r;
    int64_t off;
    tk_err e;
    memset(&r, 0, sizeof r);
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TSTRING) compat_typeerror(L, 2, "string or nil");
        r.key = lua_tolstring(L, 2, &r.key_len);
        r.has_key = 1;
    }
    r.value = check_string(L, 3, &r.value_len);
    r.timestamp = compat_optint64(L, 4, -1);
    if (!lua_isnoneornil(L, 4) && r.timestamp < 0) return push_invalid(L, "append: timestamp must be >= 0");
    if (tk_log_append(u->log, &r, 1, &off, &e) != TK_OK) return push_error(L, &e);
    compat_pushint64(L, (int64_t)off);
    return 1;
}

/* Fills r from the element at the top of the stack (batch element i);
 * its key and value strings go into the anchor table at index `anchor`,
 * which keeps them alive until the batch is written. */
static const char *batch_entry(lua_State *L, int i, int anchor, tk_rec_in *r) {
    memset(r, 0, sizeof *r);
    if (lua_type(L, -1) != LUA_TTABLE)
        luaL_error(L, "append_batch: element %d: table expected, got %s", i, luaL_typename(L, -1));
    lua_getfield(L, -1, "key");                         /* stack: elem, key */
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "append_batch: element %d: key must be a string or nil", i);
        r->key = lua_tolstring(L, -1, &r->key_len);
        r->has_key = 1;
        lua_rawseti(L, anchor, 2 * (lua_Integer)i - 1);  /* anchored: stack: elem */
    } else {
        lua_pop(L, 1);
    }
    lua_getfield(L, -1, "value");
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "append_batch: element %d: value must be a string", i);
    r->value = lua_tolstring(L, -1, &r->value_len);
    lua_rawseti(L, anchor, 2 * (lua_Integer)i);         /* anchored: stack: elem */
    lua_getfield(L, -1, "timestamp");
    r->timestamp = -1;
    if (!lua_isnil(L, -1)) {
        int64_t v = 0;
        if (lua_type(L, -1) != LUA_TNUMBER || !compat_toint64(L, -1, &v))
            luaL_error(L, "append_batch: element %d: timestamp must be an integer", i);
        if (v < 0) { lua_pop(L, 1); return "append_batch: timestamp must be >= 0"; }
        r->timestamp = v;
    }
    lua_pop(L, 1);
    return NULL;
}

static int l_append_batch(lua_State *L) {
    lua_log *u = check_log(L, 1);
    size_t n;
    tk_rec_in *recs;
    int64_t first;
    tk_err e;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    n = (size_t)compat_rawlen(L, 2);
    /* Scratch space owned by the GC, so a raise below leaks nothing. */
    recs = (tk_rec_in *)lua_newuserdata(L, (n ? n : 1) * sizeof *recs);   /* stack: log, t, scratch */
    lua_createtable(L, (int)(2 * n), 0);                /* stack: log, t, scratch, anchor */
    for (size_t i = 0; i < n; i++) {
        const char *bad;
        compat_geti(L, 2, (int64_t)(i + 1));            /* stack: ..., anchor, elem */
        bad = batch_entry(L, (int)(i + 1), 4, &recs[i]);
        lua_pop(L, 1);
        if (bad) return push_invalid(L, bad);
    }
    if (tk_log_append(u->log, recs, n, &first, &e) != TK_OK) return push_error(L, &e);
    compat_pushint64(L, (int64_t)first);
    compat_pushint64(L, (int64_t)(first + (int64_t)n - 1));
    return 2;
}

static int l_truncate(lua_State *L) {
    lua_log *u = check_log(L, 1);
    tk_err e;
    if (tk_log_truncate(u->log, compat_checkint64(L, 2), &e) != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_flush(lua_State *L) {
    lua_log *u = check_log(L, 1);
    tk_err e;
    if (tk_log_flush(u->log, &e) != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_sync(lua_State *L) {
    lua_log *u = check_log(L, 1);
    tk_err e;
    if (tk_log_sync(u->log, &e) != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Log: reading                                                         */
/* ------------------------------------------------------------------ */

static void push_record(lua_State *L, const tk_record *r) {
    lua_createtable(L, 0, 4);
    compat_pushint64(L, (int64_t)r->offset);
    lua_setfield(L, -2, "offset");
    compat_pushint64(L, (int64_t)r->timestamp);
    lua_setfield(L, -2, "timestamp");
    if (r->has_key) {
        lua_pushlstring(L, (const char *)r->key, r->key_len);
        lua_setfield(L, -2, "key");
    }
    lua_pushlstring(L, (const char *)r->value, r->value_len);
    lua_setfield(L, -2, "value");
}

static int l_read(lua_State *L) {
    lua_log *u = check_log(L, 1);
    tk_err e;
    if (tk_log_read(u->log, compat_checkint64(L, 2), &u->rec, &e) != TK_OK) return push_error(L, &e);
    push_record(L, &u->rec);
    if (u->rec.cap > TRIM_ABOVE) tk_record_free(&u->rec);  /* an idle handle keeps no big buffer */
    return 1;
}

static int iter_release(lua_State *L) {
    lua_iter *it = (lua_iter *)luaL_checkudata(L, 1, ITER_MT);
    tk_iter_close(it->it);
    it->it = NULL;
    return 0;
}

static int iter_step(lua_State *L) {
    lua_log *u = (lua_log *)lua_touserdata(L, lua_upvalueindex(1));
    lua_iter *it = (lua_iter *)lua_touserdata(L, lua_upvalueindex(2));
    tk_record rec;
    tk_err e;
    int done = 0;
    if (!it->it) return 0;
    if (!u->log) return luaL_error(L, "attempt to use a closed takhin.Log");
    memset(&rec, 0, sizeof rec);
    if (tk_iter_next(it->it, &rec, &done, &e) != TK_OK)
        return luaL_error(L, "%s (%s)", e.msg, tk_code_name(e.code));
    if (done) {
        tk_iter_close(it->it);
        it->it = NULL;
        return 0;
    }
    push_record(L, &rec);
    return 1;
}

static int l_records(lua_State *L) {
    lua_log *u = check_log(L, 1);
    int64_t from = compat_optint64(L, 2, 0);
    int64_t to = compat_optint64(L, 3, -1);
    lua_iter *it;
    tk_err e;
    if (lua_isnoneornil(L, 2)) {
        if (tk_log_refresh(u->log, &e) != TK_OK)
            return luaL_error(L, "%s (%s)", e.msg, tk_code_name(e.code));
        from = tk_log_base_offset(u->log);
    }
    if (!lua_isnoneornil(L, 3) && to < 0) to = 0;
    lua_settop(L, 1);
    it = (lua_iter *)lua_newuserdata(L, sizeof *it);   /* stack: log, iter */
    it->it = NULL;
    luaL_setmetatable(L, ITER_MT);
    if (to >= 0 && to < from) to = from;
    if (tk_iter_open(u->log, from, to, &it->it, &e) != TK_OK)
        return luaL_error(L, "%s (%s)", e.msg, tk_code_name(e.code));
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, iter_step, 2);                 /* stack: log, iter, step */
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushvalue(L, 2);            /* to-be-closed value: a `break` frees it */
    return 4;
}

static int l_offset_for_time(lua_State *L) {
    lua_log *u = check_log(L, 1);
    int64_t off;
    tk_err e;
    if (tk_log_offset_for_time(u->log, compat_checkint64(L, 2), &off, &e) != TK_OK)
        return push_error(L, &e);
    compat_pushint64(L, (int64_t)off);
    return 1;
}

/* The accessors describe the log as it is now: a read-only handle first
 * picks up what writers in other processes did (memory loads when
 * nothing changed; tk_log_refresh). */
static lua_log *refreshed_log(lua_State *L, tk_err *e, int *failed) {
    lua_log *u = check_log(L, 1);
    *failed = tk_log_refresh(u->log, e) != TK_OK;
    return u;
}

static int l_high_water_mark(lua_State *L) {
    compat_pushint64(L, (int64_t)tk_log_high_water_mark(check_log(L, 1)->log));
    return 1;
}

static int l_base_offset(lua_State *L) {
    compat_pushint64(L, (int64_t)tk_log_base_offset(check_log(L, 1)->log));
    return 1;
}

static int l_num_segments(lua_State *L) {
    tk_err e;
    int failed;
    lua_log *u = refreshed_log(L, &e, &failed);
    if (failed) return push_error(L, &e);
    compat_pushint64(L, (int64_t)tk_log_num_segments(u->log));
    return 1;
}

static int l_size(lua_State *L) {
    tk_err e;
    int failed;
    lua_log *u = refreshed_log(L, &e, &failed);
    if (failed) return push_error(L, &e);
    compat_pushint64(L, (int64_t)tk_log_size(u->log));
    return 1;
}

static int l_dir(lua_State *L) {
    lua_pushstring(L, tk_log_dir(check_log(L, 1)->log));
    return 1;
}

static int l_segments(lua_State *L) {
    tk_err e;
    int failed;
    lua_log *u = refreshed_log(L, &e, &failed);
    size_t n, got;
    tk_segment_info *info;
    if (failed) return push_error(L, &e);
    n = tk_log_segments(u->log, NULL, 0);
    for (;;) {                  /* another thread may make the log grow */
        info = (tk_segment_info *)lua_newuserdata(L, (n ? n : 1) * sizeof *info);
        got = tk_log_segments(u->log, info, n);
        if (got <= n) break;
        lua_pop(L, 1);
        n = got;
    }
    lua_createtable(L, (int)got, 0);
    for (size_t i = 0; i < got; i++) {
        lua_createtable(L, 0, 4);
        compat_pushint64(L, (int64_t)info[i].base_offset);
        lua_setfield(L, -2, "base_offset");
        compat_pushint64(L, (int64_t)info[i].next_offset);
        lua_setfield(L, -2, "next_offset");
        compat_pushint64(L, (int64_t)info[i].size);
        lua_setfield(L, -2, "size");
        lua_pushboolean(L, info[i].active);
        lua_setfield(L, -2, "active");
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Log: retention and cursors                                           */
/* ------------------------------------------------------------------ */

static int l_delete_before(lua_State *L) {
    lua_log *u = check_log(L, 1);
    int64_t base;
    tk_err e;
    if (tk_log_delete_before(u->log, compat_checkint64(L, 2), &base, &e) != TK_OK) return push_error(L, &e);
    compat_pushint64(L, base);
    return 1;
}

static int l_apply_retention(lua_State *L) {
    lua_log *u = check_log(L, 1);
    size_t n;
    tk_err e;
    if (tk_log_apply_retention(u->log, &n, &e) != TK_OK) return push_error(L, &e);
    compat_pushint64(L, (int64_t)n);
    return 1;
}

static const char *const commit_opt_names[] = { "expect", "force", NULL };

/* commit(name, offset [, { expect = offset | false, force = bool }]) -> true.
 * expect = false: only when the cursor was never committed. */
static int l_commit(lua_State *L) {
    lua_log *u = check_log(L, 1);
    const char *name = check_cstring(L, 2);
    int64_t offset = compat_checkint64(L, 3);
    tk_commit_opts o = { 0, 0, 0 };
    tk_err e;
    if (!name) return push_invalid(L, "commit: cursor name contains a NUL byte");
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        check_field_names(L, 4, "commit", commit_opt_names);
        lua_getfield(L, 4, "expect");
        if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            o.has_expect = 1;
            o.expect = TK_NONE;
        } else if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TNUMBER || !compat_toint64(L, -1, &o.expect))
                luaL_error(L, "option 'expect': integer or false expected, got %s",
                           luaL_typename(L, -1));
            if (o.expect == TK_NONE) o.expect++;
            o.has_expect = 1;
        }
        lua_pop(L, 1);
        o.force = field_bool(L, 4, "force");
    }
    if (tk_log_commit(u->log, name, offset, &o, &e) != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

/* committed(name) -> offset | nil (never committed) | nil, msg, code */
static int l_committed(lua_State *L) {
    lua_log *u = check_log(L, 1);
    const char *name = check_cstring(L, 2);
    int64_t offset;
    int found;
    tk_err e;
    if (!name) return push_invalid(L, "committed: cursor name contains a NUL byte");
    if (tk_log_committed(u->log, name, &offset, &found, &e) != TK_OK) return push_error(L, &e);
    if (!found) lua_pushnil(L);
    else compat_pushint64(L, offset);
    return 1;
}

static int l_cursors(lua_State *L) {
    lua_log *u = check_log(L, 1);
    size_t n = tk_log_cursors(u->log, NULL, 0), got;
    tk_cursor_info *list;
    for (;;) {                      /* another process may add one meanwhile */
        list = (tk_cursor_info *)lua_newuserdata(L, (n ? n : 1) * sizeof *list);
        got = tk_log_cursors(u->log, list, n);
        if (got <= n) break;
        lua_pop(L, 1);
        n = got;
    }
    lua_createtable(L, 0, (int)got);
    for (size_t i = 0; i < got; i++) {
        compat_pushint64(L, list[i].offset);
        lua_setfield(L, -2, list[i].name);
    }
    return 1;
}

static int l_delete_cursor(lua_State *L) {
    lua_log *u = check_log(L, 1);
    const char *name = check_cstring(L, 2);
    tk_err e;
    if (!name) return push_invalid(L, "delete_cursor: cursor name contains a NUL byte");
    if (tk_log_delete_cursor(u->log, name, &e) != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

static void set_count(lua_State *L, const char *name, uint64_t v) {
    compat_pushint64(L, (int64_t)(v & INT64_MAX));
    lua_setfield(L, -2, name);
}

/* stats() -> { appends =, ..., fsync_seconds = { sum =, buckets = { { le =, count = }, ... } },
 *              errors = { CODE = n, ... }, base_offset =, high_water_mark =, ... } */
static int l_stats(lua_State *L) {
    static const uint64_t bounds[TK_FSYNC_BUCKETS] = TK_FSYNC_BUCKET_BOUNDS_US;
    lua_log *u = check_log(L, 1);
    tk_log_stats st;
    uint64_t cum = 0;
    tk_err e;
    tk_log_refresh(u->log, &e);                 /* best effort: gauges of the view */
    tk_log_stats_get(u->log, &st);
    lua_createtable(L, 0, 20);
    set_count(L, "appends", st.appends);
    set_count(L, "records", st.records);
    set_count(L, "bytes", st.bytes);
    set_count(L, "reads", st.reads);
    set_count(L, "fsyncs", st.fsyncs);
    set_count(L, "rolls", st.rolls);
    set_count(L, "truncates", st.truncates);
    set_count(L, "segments_deleted", st.segments_deleted);
    set_count(L, "cursor_commits", st.cursor_commits);
    lua_createtable(L, 0, 2);                               /* fsync_seconds */
    lua_pushnumber(L, (lua_Number)st.fsync_us / 1e6);
    lua_setfield(L, -2, "sum");
    lua_createtable(L, TK_FSYNC_BUCKETS, 0);
    for (int k = 0; k < TK_FSYNC_BUCKETS; k++) {
        cum += st.fsync_buckets[k];
        lua_createtable(L, 0, 2);
        lua_pushnumber(L, k + 1 < TK_FSYNC_BUCKETS ? (lua_Number)bounds[k] / 1e6 : HUGE_VAL);
        lua_setfield(L, -2, "le");
        set_count(L, "count", cum);
        lua_rawseti(L, -2, k + 1);
    }
    lua_setfield(L, -2, "buckets");
    set_count(L, "count", cum);
    lua_setfield(L, -2, "fsync_seconds");
    lua_createtable(L, 0, TK_CODE_COUNT);                   /* errors */
    for (int c = 1; c < TK_CODE_COUNT; c++) set_count(L, tk_code_name((tk_code)c), st.errors[c]);
    lua_setfield(L, -2, "errors");
    compat_pushint64(L, st.base_offset);
    lua_setfield(L, -2, "base_offset");
    compat_pushint64(L, st.high_water_mark);
    lua_setfield(L, -2, "high_water_mark");
    compat_pushint64(L, st.synced);
    lua_setfield(L, -2, "synced_offset");
    set_count(L, "size", st.size);
    set_count(L, "num_segments", st.num_segments);
    set_count(L, "writers", st.writers);
    return 1;
}

/* _wait(offset, timeout_ms) -> true | false: timeout_ms < 0 waits for
 * ever.  takhin/init.lua parses durations and words the result. */
static int l_wait(lua_State *L) {
    lua_log *u = check_log(L, 1);
    int64_t offset = compat_checkint64(L, 2), timeout = compat_optint64(L, 3, -1);
    lua_pushboolean(L, tk_log_wait(u->log, offset, timeout));
    return 1;
}

/* ------------------------------------------------------------------ */
/* Log: life cycle                                                      */
/* ------------------------------------------------------------------ */

/* The one quiet release path of close, __gc and __close. */
static void log_release(lua_log *u) {
    tk_log_close(u->log);
    u->log = NULL;
    tk_record_free(&u->rec);
}

static int l_close(lua_State *L) {
    lua_log *u = (lua_log *)luaL_checkudata(L, 1, LOG_MT);
    if (u->busy) return luaL_error(L, "attempt to close a takhin.Log while a call using it "
                                   "is in progress");
    if (u->log && tk_log_users(u->log) > 0)
        return luaL_error(L, "attempt to close a takhin.Log while a snapshot job uses it "
                          "(wait for the job or cancel it first)");
    log_release(u);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_gc(lua_State *L) {
    lua_log *u = (lua_log *)lua_touserdata(L, 1);
    if (!u || u->busy) return 0;
    if (u->log && tk_log_users(u->log) > 0) u->close_pending = 1;   /* the job closes it */
    else log_release(u);
    return 0;
}

static int l_tostring(lua_State *L) {
    lua_log *u = (lua_log *)luaL_checkudata(L, 1, LOG_MT);
    static const char *const modes[] = { "", ", shared", ", read-only" };
    char buf[160];
    tk_err e;
    if (!u->log) {
        lua_pushliteral(L, "takhin.Log(closed)");
        return 1;
    }
    tk_log_refresh(u->log, &e);                     /* best effort: it is for display */
    snprintf(buf, sizeof buf, "offsets [%lld, %lld), %zu segment%s%s",
             (long long)tk_log_base_offset(u->log), (long long)tk_log_high_water_mark(u->log),
             tk_log_num_segments(u->log), tk_log_num_segments(u->log) == 1 ? "" : "s",
             modes[tk_log_get_mode(u->log)]);
    lua_pushfstring(L, "takhin.Log(%s, %s)", tk_log_dir(u->log), buf);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                 */
/* ------------------------------------------------------------------ */

static void push_snapshot_at(lua_State *L, const tk_snapshot *s, const char *path);

/* A new takhin.Job, still empty (the job starts after: a failure to make
 * the userdata then leaks nothing), holding the manager at sm_idx and the
 * log at log_idx (0: none) alive in its uservalue. */
static lua_job *new_job(lua_State *L, int sm_idx, lua_log *log, int log_idx) {
    lua_job *u = (lua_job *)compat_newuserdata(L, sizeof *u);
    u->job = NULL;
    u->log = NULL;
    luaL_setmetatable(L, JOB_MT);
    lua_createtable(L, 0, 3);
    lua_pushvalue(L, sm_idx);
    lua_setfield(L, -2, "manager");
    if (log_idx) {
        lua_pushvalue(L, log_idx);
        lua_setfield(L, -2, "log");
        u->log = log;
    }
    compat_setuservalue(L, -2);
    return u;
}

/* The one quiet release path: cancel if running, join, free; a log
 * collected meanwhile is closed now. */
static void job_release(lua_job *u) {
    tk_job_free(u->job);
    u->job = NULL;
    if (u->log && u->log->close_pending && u->log->log && tk_log_users(u->log->log) == 0)
        log_release(u->log);
    u->log = NULL;
}

static lua_job *check_job(lua_State *L, int idx) {
    lua_job *u = (lua_job *)luaL_checkudata(L, idx, JOB_MT);
    if (!u->job) luaL_error(L, "attempt to use a closed takhin.Job");
    return u;
}

static int l_job_done(lua_State *L) {
    lua_pushboolean(L, tk_job_done(check_job(L, 1)->job));
    return 1;
}

static int l_job_progress(lua_State *L) {
    uint64_t done, total;
    tk_job_progress(check_job(L, 1)->job, &done, &total);
    compat_pushint64(L, (int64_t)done);
    compat_pushint64(L, (int64_t)total);
    return 2;
}

static int l_job_cancel(lua_State *L) {
    tk_job_cancel(check_job(L, 1)->job);
    lua_pushboolean(L, 1);
    return 1;
}

/* _wait([timeout_ms]) -> what the synchronous call returns, or false,
 * "timeout" (takhin/init.lua parses durations). */
static int l_job_wait(lua_State *L) {
    lua_job *u = check_job(L, 1);
    int64_t ms = compat_optint64(L, 2, -1);
    const char *kind = tk_job_kind(u->job);
    tk_err e;
    if (!tk_job_wait(u->job, ms)) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    if (tk_job_result(u->job, &e) != TK_OK) return push_error(L, &e);
    if (strcmp(kind, "create") == 0 || strcmp(kind, "import") == 0) {
        tk_snapshot snap;
        char path[4096];
        if (!tk_job_snapshot(u->job, &snap, path, sizeof path))
            return push_fail(L, TK_NOMEM, "job: out of memory");
        push_snapshot_at(L, &snap, path);
        tk_snapshot_free(&snap);
        return 1;
    }
    if (strcmp(kind, "export") == 0) {                 /* true, bytes written */
        lua_pushboolean(L, 1);
        compat_pushint64(L, (int64_t)tk_job_count(u->job));
        return 2;
    }
    if (strcmp(kind, "cleanup") == 0) {
        compat_pushint64(L, (int64_t)tk_job_count(u->job));
        compat_getuservalue(L, 1);
        lua_getfield(L, -1, "plan");            /* what sm:cleanup returns beside the count */
        lua_remove(L, -2);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* _set_plan(plan): sm:cleanup's second result, for wait. */
static int l_job_set_plan(lua_State *L) {
    check_job(L, 1);
    compat_getuservalue(L, 1);
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "plan");
    return 0;
}

static int l_job_close(lua_State *L) {
    job_release((lua_job *)luaL_checkudata(L, 1, JOB_MT));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_job_gc(lua_State *L) {
    lua_job *u = (lua_job *)lua_touserdata(L, 1);
    if (u) job_release(u);
    return 0;
}

static int l_job_tostring(lua_State *L) {
    lua_job *u = (lua_job *)luaL_checkudata(L, 1, JOB_MT);
    uint64_t done, total;
    if (!u->job) {
        lua_pushliteral(L, "takhin.Job(closed)");
        return 1;
    }
    tk_job_progress(u->job, &done, &total);
    if (tk_job_done(u->job))
        lua_pushfstring(L, "takhin.Job(%s, done)", tk_job_kind(u->job));
    else
        lua_pushfstring(L, "takhin.Job(%s, running, %d%%)", tk_job_kind(u->job),
                        total ? (int)(done * 100 / total) : 0);
    return 1;
}

static const luaL_Reg job_methods[] = {
    { "done", l_job_done },
    { "progress", l_job_progress },
    { "cancel", l_job_cancel },
    { "_wait", l_job_wait },
    { "_set_plan", l_job_set_plan },
    { "close", l_job_close },
    { NULL, NULL }
};

static const luaL_Reg job_meta[] = {
    { "__gc", l_job_gc },
    { "__close", l_job_gc },
    { "__tostring", l_job_tostring },
    { NULL, NULL }
};

/* ------------------------------------------------------------------ */
/* SnapshotManager                                                      */
/* ------------------------------------------------------------------ */

static void push_snapshot(lua_State *L, tk_snapmgr *mgr, const tk_snapshot *s) {
    char path[4096];
    tk_err e;
    push_snapshot_at(L, s, tk_snap_path(mgr, s->id, path, sizeof path, &e) == TK_OK ? path : NULL);
}

static void push_snapshot_at(lua_State *L, const tk_snapshot *s, const char *path) {
    lua_createtable(L, 0, 12);
    lua_pushstring(L, s->id);
    lua_setfield(L, -2, "id");
    compat_pushint64(L, (int64_t)s->timestamp);
    lua_setfield(L, -2, "timestamp");
    if (s->seq > 0) {
        compat_pushint64(L, (int64_t)s->seq);
        lua_setfield(L, -2, "seq");
    }
    compat_pushint64(L, (int64_t)s->total_size);
    lua_setfield(L, -2, "total_size");
    if (path) {
        lua_pushstring(L, path);
        lua_setfield(L, -2, "path");
    }
    if (s->damaged) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "damaged");
        return;
    }
    compat_pushint64(L, (int64_t)s->base_offset);
    lua_setfield(L, -2, "base_offset");
    compat_pushint64(L, (int64_t)s->high_water_mark);
    lua_setfield(L, -2, "high_water_mark");
    compat_pushint64(L, (int64_t)s->num_segments);
    lua_setfield(L, -2, "num_segments");
    lua_createtable(L, (int)s->num_segments, 0);
    for (size_t i = 0; i < s->num_segments; i++) {
        compat_pushint64(L, (int64_t)s->segment_offsets[i]);
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
    lua_setfield(L, -2, "segment_offsets");
    lua_pushstring(L, s->mode == TK_SNAP_COPY ? "copy" : "link");
    lua_setfield(L, -2, "mode");
    if (s->label[0]) {
        lua_pushstring(L, s->label);
        lua_setfield(L, -2, "label");
    }
}

static const char *const sm_opt_names[] = { "dir", "mode", NULL };

static int l_snapshot_manager(lua_State *L) {
    const char *log_dir = check_cstring(L, 1), *dir = NULL, *m;
    tk_snap_mode mode = TK_SNAP_LINK;
    int bad = 0;
    lua_sm *u;
    tk_err e;
    if (!log_dir) return push_invalid(L, "snapshot_manager: path contains a NUL byte");
    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        check_field_names(L, 2, "snapshot_manager", sm_opt_names);
        dir = field_string(L, 2, "dir", &bad);              /* stack: ..., dir (kept) */
        if (bad) return push_invalid(L, "snapshot_manager: dir contains a NUL byte");
        m = field_string(L, 2, "mode", &bad);               /* stack: ..., dir, mode */
        if (m && strcmp(m, "copy") == 0) mode = TK_SNAP_COPY;
        else if (m && strcmp(m, "link") != 0)
            return push_invalid(L, "snapshot_manager: mode must be \"link\" or \"copy\"");
    }
    u = (lua_sm *)lua_newuserdata(L, sizeof *u);
    u->mgr = NULL;
    u->busy = 0;
    luaL_setmetatable(L, SM_MT);
    if (tk_snapmgr_open(log_dir, dir, mode, &u->mgr, &e) != TK_OK) return push_error(L, &e);
    return 1;
}

/* Progress callbacks call Lua under pcall: an error in a callback must not
 * unwind through the engine.  The first one is raised after the call. */
typedef struct lua_progress {
    lua_State *L;
    int fn;                     /* stack index of the function, 0: none */
    int failed;
} lua_progress;

static void call_progress(void *ud, uint64_t done, uint64_t total) {
    lua_progress *p = (lua_progress *)ud;
    if (p->failed) return;
    lua_pushvalue(p->L, p->fn);
    lua_pushnumber(p->L, (lua_Number)done);         /* never raises: no pushint64 here */
    lua_pushnumber(p->L, (lua_Number)total);
    if (lua_pcall(p->L, 2, 0, 0) != LUA_OK) p->failed = lua_gettop(p->L);   /* keep the error */
}

static void setup_progress(lua_State *L, int t, lua_progress *p, tk_progress_fn *fn, void **ud) {
    p->L = L;
    p->fn = 0;
    p->failed = 0;
    *fn = NULL;
    *ud = NULL;
    if (!t) return;
    lua_getfield(L, t, "progress");
    if (lua_isnil(L, -1)) { lua_pop(L, 1); return; }
    if (lua_type(L, -1) != LUA_TFUNCTION)
        luaL_error(L, "option 'progress': function expected, got %s", luaL_typename(L, -1));
    p->fn = lua_gettop(L);                          /* left on the stack */
    *fn = call_progress;
    *ud = p;
}

static void raise_progress_error(lua_State *L, const lua_progress *p) {
    if (p->failed) {
        lua_pushvalue(L, p->failed);
        lua_error(L);
    }
}

/* threads: >= 1, or 0 (one per CPU) when absent. */
static unsigned field_threads(lua_State *L, int t) {
    int64_t v = 0;
    if (t && field_int(L, t, "threads", &v) && (v < 1 || v > 64))
        luaL_error(L, "option 'threads': %d is outside 1 .. 64", (int)v);
    return (unsigned)v;
}

/* async = true: the caller wants a takhin.Job; progress callbacks cannot
 * be called from a job's thread. */
static int field_async(lua_State *L, int t) {
    int async = t ? field_bool(L, t, "async") : 0;
    if (async) {
        lua_getfield(L, t, "progress");
        if (!lua_isnil(L, -1))
            luaL_error(L, "option 'progress': not called for an async job (use job:progress())");
        lua_pop(L, 1);
    }
    return async;
}

static const char *const create_opt_names[] = {
    "min_interval_ms", "label", "progress", "async", "threads", NULL
};

static int l_sm_create(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    lua_log *lg = check_log(L, 2);
    tk_create_opts o;
    tk_snapshot snap;
    lua_progress pr;
    tk_err e;
    int t = 0, bad = 0;
    tk_code rc;
    tk_create_opts_init(&o);
    lua_settop(L, 3);
    if (!lua_isnil(L, 3)) {
        int64_t v;
        luaL_checktype(L, 3, LUA_TTABLE);
        t = 3;
        check_field_names(L, 3, "create", create_opt_names);
        if (field_int(L, 3, "min_interval_ms", &v)) {
            if (v < 0) return push_invalid(L, "create: min_interval must be >= 0");
            o.min_interval_ms = v;
        }
        o.label = field_string(L, 3, "label", &bad);     /* stays on the stack */
        if (bad) return push_invalid(L, "create: label contains a NUL byte");
    }
    o.threads = field_threads(L, t);
    if (field_async(L, t)) {
        lua_job *j = new_job(L, 1, lg, 2);
        if (tk_snap_create_async(u->mgr, lg->log, &o, &j->job, &e) != TK_OK) {
            j->log = NULL;
            return push_error(L, &e);
        }
        return 1;
    }
    setup_progress(L, t, &pr, &o.progress, &o.progress_ud);
    u->busy++;
    lg->busy++;
    rc = tk_snap_create(u->mgr, lg->log, &o, &snap, &e);
    u->busy--;
    lg->busy--;
    if (pr.failed && rc == TK_OK) tk_snapshot_free(&snap);
    raise_progress_error(L, &pr);
    if (rc != TK_OK) return push_error(L, &e);
    push_snapshot(L, u->mgr, &snap);
    tk_snapshot_free(&snap);
    return 1;
}

static const char *const restore_opt_names[] = {
    "replace", "upto_offset", "upto_timestamp", "progress", "async", "threads", NULL
};

static int l_sm_restore(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    const char *id = check_cstring(L, 2), *target = check_cstring(L, 3);
    tk_restore_opts o;
    lua_progress pr;
    tk_err e;
    int t = 0;
    tk_code rc;
    if (!id) return push_invalid(L, "restore: id contains a NUL byte");
    if (!target) return push_invalid(L, "restore: target contains a NUL byte");
    tk_restore_opts_init(&o);
    lua_settop(L, 4);
    if (!lua_isnil(L, 4)) {
        int64_t v;
        luaL_checktype(L, 4, LUA_TTABLE);
        t = 4;
        check_field_names(L, 4, "restore", restore_opt_names);
        o.replace = field_bool(L, 4, "replace");
        if (field_int(L, 4, "upto_offset", &v)) {
            if (v < 0) {
                char msg[160];
                snprintf(msg, sizeof msg, "restore %s: upto_offset %lld is below the "
                         "snapshot's base offset", id, (long long)v);
                return push_fail(L, TK_OUT_OF_RANGE, msg);
            }
            o.upto_offset = v;
        }
        if (field_int(L, 4, "upto_timestamp", &v)) o.upto_timestamp = v == TK_NONE ? v + 1 : v;
    }
    o.threads = field_threads(L, t);
    if (field_async(L, t)) {
        lua_job *j = new_job(L, 1, NULL, 0);
        if (tk_snap_restore_async(u->mgr, id, target, &o, &j->job, &e) != TK_OK)
            return push_error(L, &e);
        return 1;
    }
    setup_progress(L, t, &pr, &o.progress, &o.progress_ud);
    u->busy++;
    rc = tk_snap_restore(u->mgr, id, target, &o, &e);
    u->busy--;
    raise_progress_error(L, &pr);
    if (rc != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_sm_list(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    tk_snapshot *snaps;
    size_t n;
    tk_err e;
    if (tk_snap_list(u->mgr, &snaps, &n, &e) != TK_OK) return push_error(L, &e);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        push_snapshot(L, u->mgr, &snaps[i]);
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
    tk_snapshot_list_free(snaps, n);
    return 1;
}

static int l_sm_get(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    const char *id = check_cstring(L, 2);
    tk_snapshot snap;
    tk_err e;
    if (!id) return push_invalid(L, "get: id contains a NUL byte");
    if (tk_snap_get(u->mgr, id, &snap, &e) != TK_OK) return push_error(L, &e);
    push_snapshot(L, u->mgr, &snap);
    tk_snapshot_free(&snap);
    return 1;
}

/* The newest healthy snapshot, in creation order. */
static int l_sm_latest(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    tk_snapshot *snaps;
    size_t n, i;
    tk_err e;
    if (tk_snap_list(u->mgr, &snaps, &n, &e) != TK_OK) return push_error(L, &e);
    for (i = 0; i < n && snaps[i].damaged; i++) {}
    if (i == n) {
        tk_snapshot_list_free(snaps, n);
        lua_pushnil(L);
        lua_pushfstring(L, "no snapshots in %s", tk_snapmgr_dir(u->mgr));
        lua_pushstring(L, tk_code_name(TK_NOT_FOUND));
        return 3;
    }
    push_snapshot(L, u->mgr, &snaps[i]);
    tk_snapshot_list_free(snaps, n);
    return 1;
}

static const char *const delete_opt_names[] = { "async", NULL };

/* delete(id [, { async = true }]) -> true (or a takhin.Job) */
static int l_sm_delete(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    const char *id = check_cstring(L, 2);
    tk_err e;
    if (!id) return push_invalid(L, "delete: id contains a NUL byte");
    lua_settop(L, 3);
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        check_field_names(L, 3, "delete", delete_opt_names);
        if (field_async(L, 3)) {
            lua_job *j = new_job(L, 1, NULL, 0);
            if (tk_snap_delete_async(u->mgr, id, &j->job, &e) != TK_OK) return push_error(L, &e);
            return 1;
        }
    }
    if (tk_snap_delete(u->mgr, id, &e) != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

/* _delete_many(ids [, async]) -> number deleted (or a takhin.Job): one
 * metadata update (policies).  The ids are anchored in a table of our own
 * while the engine reads them. */
static int l_sm_delete_many(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    size_t n, deleted = 0;
    const char **ids;
    int async = lua_toboolean(L, 3);
    tk_err e;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    n = (size_t)compat_rawlen(L, 2);
    ids = (const char **)lua_newuserdata(L, (n ? n : 1) * sizeof *ids);
    lua_createtable(L, (int)n, 0);                      /* stack: sm, ids, scratch, anchor */
    for (size_t i = 0; i < n; i++) {
        compat_geti(L, 2, (int64_t)(i + 1));
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "_delete_many: ids must be strings");
        ids[i] = lua_tostring(L, -1);
        lua_rawseti(L, 4, (lua_Integer)(i + 1));
    }
    if (async) {                        /* the engine copies the ids */
        lua_job *j = new_job(L, 1, NULL, 0);
        if (tk_snap_delete_many_async(u->mgr, ids, n, &j->job, &e) != TK_OK)
            return push_error(L, &e);
        return 1;
    }
    if (tk_snap_delete_many(u->mgr, ids, n, &deleted, &e) != TK_OK) return push_error(L, &e);
    compat_pushint64(L, (int64_t)deleted);
    return 1;
}

/* _cleanup(max_snapshots, retention_ms) -> number deleted; 0 / -1 turn a
 * rule off.  The Lua layer (takhin.policy) parses the user's options. */
static int l_sm_cleanup(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    int64_t max = compat_checkint64(L, 2), retention = compat_checkint64(L, 3);
    size_t deleted = 0;
    tk_err e;
    if (max < 0) return push_invalid(L, "cleanup: max_snapshots must be >= 0");
    if (tk_snap_cleanup(u->mgr, (size_t)max, retention, &deleted, &e) != TK_OK)
        return push_error(L, &e);
    compat_pushint64(L, (int64_t)deleted);
    return 1;
}

static const char *const verify_opt_names[] = { "progress", "async", "threads", NULL };

static int l_sm_verify(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    const char *id = check_cstring(L, 2);
    lua_progress pr;
    tk_verify_opts o;
    tk_err e;
    tk_code rc;
    int t = 0;
    if (!id) return push_invalid(L, "verify: id contains a NUL byte");
    memset(&o, 0, sizeof o);
    lua_settop(L, 3);
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        check_field_names(L, 3, "verify", verify_opt_names);
        t = 3;
    }
    o.threads = field_threads(L, t);
    if (field_async(L, t)) {
        lua_job *j = new_job(L, 1, NULL, 0);
        if (tk_snap_verify_async(u->mgr, id, &o, &j->job, &e) != TK_OK) return push_error(L, &e);
        return 1;
    }
    setup_progress(L, t, &pr, &o.progress, &o.progress_ud);
    u->busy++;
    rc = tk_snap_verify(u->mgr, id, &o, &e);
    u->busy--;
    raise_progress_error(L, &pr);
    if (rc != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_sm_size(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    uint64_t size;
    tk_err e;
    if (tk_snap_total_size(u->mgr, &size, &e) != TK_OK) return push_error(L, &e);
    compat_pushint64(L, (int64_t)size);
    return 1;
}

static int l_sm_dir(lua_State *L) {
    lua_pushstring(L, tk_snapmgr_dir(check_sm(L, 1)->mgr));
    return 1;
}

static int l_sm_close(lua_State *L) {
    lua_sm *u = (lua_sm *)luaL_checkudata(L, 1, SM_MT);
    if (u->busy) return luaL_error(L, "attempt to close a takhin.SnapshotManager while one of "
                                   "its calls is in progress");
    tk_snapmgr_close(u->mgr);
    u->mgr = NULL;
    lua_pushboolean(L, 1);
    return 1;
}

static int l_sm_gc(lua_State *L) {
    lua_sm *u = (lua_sm *)lua_touserdata(L, 1);
    if (u && !u->busy) {
        tk_snapmgr_close(u->mgr);
        u->mgr = NULL;
    }
    return 0;
}

static int l_sm_tostring(lua_State *L) {
    lua_sm *u = (lua_sm *)luaL_checkudata(L, 1, SM_MT);
    if (!u->mgr) lua_pushliteral(L, "takhin.SnapshotManager(closed)");
    else lua_pushfstring(L, "takhin.SnapshotManager(%s)", tk_snapmgr_dir(u->mgr));
    return 1;
}

static int l_check_id(lua_State *L) {
    const char *id = check_cstring(L, 1);
    tk_err e;
    if (!id) return push_invalid(L, "snapshot id contains a NUL byte");
    if (tk_snap_check_id(id, &e) != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

/* ------------------------------------------------------------------ */
/* SnapshotManager: export and import                                   */
/* ------------------------------------------------------------------ */

#ifndef LUA_FILEHANDLE
#define LUA_FILEHANDLE "FILE*"                      /* Lua 5.1 / LuaJIT: lualib.h */
#endif

/* The FILE * of the Lua file at idx (io.stdout, io.open(...)), or NULL
 * when the value is not a Lua file; a closed one raises.  The userdata
 * starts with the FILE * in Lua 5.4 (luaL_Stream, closef NULL once
 * closed) and in Lua 5.1 and LuaJIT (NULL once closed). */
static FILE *to_lua_file(lua_State *L, int idx) {
    void *u = lua_touserdata(L, idx);
    FILE *f;
    int same;
    if (!u || !lua_getmetatable(L, idx)) return NULL;
    luaL_getmetatable(L, LUA_FILEHANDLE);
    same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!same) return NULL;
#if LUA_VERSION_NUM >= 502
    f = ((luaL_Stream *)u)->closef ? ((luaL_Stream *)u)->f : NULL;
#else
    f = *(FILE **)u;
#endif
    if (!f) luaL_error(L, "attempt to use a closed file");
    return f;
}

/* How messages name a Lua file.  export and import take a path or an
 * open Lua file; for a file, Lua's buffer is flushed first and the engine
 * reads or writes its descriptor (fileno) from its current position. */
static const char *file_name(FILE *f) {
    return f == stdin ? "stdin" : f == stdout ? "stdout" : f == stderr ? "stderr" : NULL;
}

static const char *const export_opt_names[] = { "since", "compress", "level", "progress", "async",
                                                 NULL };

/* An async export or import keeps the Lua file it reads or writes alive
 * (and open) in the job's uservalue until the job is collected. */
static lua_job *new_transfer_job(lua_State *L, int file_idx) {
    lua_job *j = new_job(L, 1, NULL, 0);
    if (file_idx) {
        compat_getuservalue(L, -1);
        lua_pushvalue(L, file_idx);
        lua_setfield(L, -2, "file");
        lua_pop(L, 1);
    }
    return j;
}

/* export(id, dest [, opts]) -> true, bytes written */
static int l_sm_export(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    const char *id = check_cstring(L, 2), *path = NULL, *comp;
    FILE *f = NULL;
    tk_export_opts o;
    lua_progress pr;
    uint64_t written = 0;
    tk_err e;
    int t = 0, bad = 0;
    tk_code rc;
    if (!id) return push_invalid(L, "export: id contains a NUL byte");
    lua_settop(L, 4);
    if (lua_type(L, 3) == LUA_TSTRING) {
        if (!(path = check_cstring(L, 3))) return push_invalid(L, "export: path contains a NUL byte");
    } else if (!(f = to_lua_file(L, 3))) {
        return compat_typeerror(L, 3, "path or file");
    }
    tk_export_opts_init(&o);
    if (!lua_isnil(L, 4)) {
        int64_t v;
        luaL_checktype(L, 4, LUA_TTABLE);
        t = 4;
        check_field_names(L, 4, "export", export_opt_names);
        o.since = field_string(L, 4, "since", &bad);        /* stays on the stack */
        if (bad) return push_invalid(L, "export: since contains a NUL byte");
        comp = field_string(L, 4, "compress", &bad);
        if (comp && strcmp(comp, "zstd") == 0) o.compress = TK_COMPRESS_ZSTD;
        else if (comp && strcmp(comp, "none") != 0)
            return push_invalid(L, "export: compress must be \"zstd\" or \"none\"");
        if (field_int(L, 4, "level", &v)) {
            if (v < 1 || v > 19) {
                char msg[128];
                snprintf(msg, sizeof msg, "export %s: zstd level %lld is outside 1..19", id,
                         (long long)v);
                return push_invalid(L, msg);
            }
            o.level = (int)v;
        }
    }
    if (f && fflush(f) != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "export %s: flush the file: %s", id, strerror(errno));
        return push_fail(L, TK_IO, msg);
    }
    if (field_async(L, t)) {
        lua_job *j = new_transfer_job(L, f ? 3 : 0);
        if (f) o.name = file_name(f);
        if (tk_snap_export_async(u->mgr, id, f ? fileno(f) : -1, path, &o, &j->job, &e) != TK_OK)
            return push_error(L, &e);
        return 1;
    }
    setup_progress(L, t, &pr, &o.progress, &o.progress_ud);
    o.written = &written;
    u->busy++;
    if (path) {
        rc = tk_snap_export_file(u->mgr, id, path, &o, &e);
    } else {
        o.name = file_name(f);
        rc = tk_snap_export(u->mgr, id, fileno(f), &o, &e);
    }
    u->busy--;
    raise_progress_error(L, &pr);
    if (rc != TK_OK) return push_error(L, &e);
    lua_pushboolean(L, 1);
    compat_pushint64(L, (int64_t)written);
    return 2;
}

static const char *const import_opt_names[] = { "progress", "async", NULL };

/* import(src [, opts]) -> the snapshot's record */
static int l_sm_import(lua_State *L) {
    lua_sm *u = check_sm(L, 1);
    const char *path = NULL;
    FILE *f = NULL;
    tk_import_opts o;
    tk_snapshot snap;
    lua_progress pr;
    tk_err e;
    int t = 0;
    tk_code rc;
    lua_settop(L, 3);
    if (lua_type(L, 2) == LUA_TSTRING) {
        if (!(path = check_cstring(L, 2))) return push_invalid(L, "import: path contains a NUL byte");
    } else if (!(f = to_lua_file(L, 2))) {
        return compat_typeerror(L, 2, "path or file");
    }
    tk_import_opts_init(&o);
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        t = 3;
        check_field_names(L, 3, "import", import_opt_names);
    }
    if (f) fflush(f);           /* a seekable file's descriptor moves to the Lua position */
    if (field_async(L, t)) {
        lua_job *j = new_transfer_job(L, f ? 2 : 0);
        if (f) o.name = file_name(f);
        if (tk_snap_import_async(u->mgr, f ? fileno(f) : -1, path, &o, &j->job, &e) != TK_OK)
            return push_error(L, &e);
        return 1;
    }
    setup_progress(L, t, &pr, &o.progress, &o.progress_ud);
    u->busy++;
    if (path) {
        rc = tk_snap_import_file(u->mgr, path, &o, &snap, &e);
    } else {
        o.name = file_name(f);
        rc = tk_snap_import_ex(u->mgr, fileno(f), &o, &snap, &e);
    }
    u->busy--;
    raise_progress_error(L, &pr);
    if (rc != TK_OK) return push_error(L, &e);
    push_snapshot(L, u->mgr, &snap);
    tk_snapshot_free(&snap);
    return 1;
}

static const luaL_Reg sm_methods[] = {
    { "_create", l_sm_create },
    { "restore", l_sm_restore },
    { "list", l_sm_list },
    { "get", l_sm_get },
    { "latest", l_sm_latest },
    { "delete", l_sm_delete },
    { "_delete_many", l_sm_delete_many },
    { "_cleanup", l_sm_cleanup },
    { "verify", l_sm_verify },
    { "export", l_sm_export },
    { "import", l_sm_import },
    { "size", l_sm_size },
    { "dir", l_sm_dir },
    { "close", l_sm_close },
    { NULL, NULL }
};

static const luaL_Reg sm_meta[] = {
    { "__gc", l_sm_gc },
    { "__close", l_sm_gc },
    { "__tostring", l_sm_tostring },
    { NULL, NULL }
};

/* ------------------------------------------------------------------ */
/* The fault build's failure injection (sys.h), for the specs           */
/* ------------------------------------------------------------------ */

#ifdef TK_FAULT_INJECTION
static int check_kind(lua_State *L, int idx) {
    int k = tk_sys_kind_from_name(luaL_checkstring(L, idx));
    if (k < 0) luaL_argerror(L, idx, "open, write, fsync, rename, link, ftruncate or malloc expected");
    return k;
}

/* _fault_arm(kind, nth [, errno_name [, persist]]) */
static int l_fault_arm(lua_State *L) {
    int k = check_kind(L, 1), e = EIO;
    const char *name = luaL_optstring(L, 3, "EIO");
    if (strcmp(name, "ENOSPC") == 0) e = ENOSPC;
    else if (strcmp(name, "ENOMEM") == 0) e = ENOMEM;
    else if (strcmp(name, "EACCES") == 0) e = EACCES;
    tk_sys_arm(k, (long)luaL_checkinteger(L, 2), e, lua_toboolean(L, 4));
    return 0;
}

static int l_fault_calls(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)tk_sys_calls(check_kind(L, 1)));
    return 1;
}

static int l_fault_reset(lua_State *L) {
    (void)L;
    tk_sys_reset();
    return 0;
}
#endif

/* ------------------------------------------------------------------ */
/* Module                                                               */
/* ------------------------------------------------------------------ */

static int l_crc32c(lua_State *L) {
    size_t len;
    const char *s = check_string(L, 1, &len);
    int64_t crc = compat_optint64(L, 2, 0);
    luaL_argcheck(L, crc >= 0 && crc <= 0xffffffffLL, 2, "CRC out of range");
    compat_pushint64(L, (int64_t)tk_crc32c((uint32_t)crc, s, len));
    return 1;
}

static const luaL_Reg log_methods[] = {
    { "append", l_append },
    { "append_batch", l_append_batch },
    { "read", l_read },
    { "records", l_records },
    { "offset_for_time", l_offset_for_time },
    { "high_water_mark", l_high_water_mark },
    { "base_offset", l_base_offset },
    { "num_segments", l_num_segments },
    { "size", l_size },
    { "segments", l_segments },
    { "dir", l_dir },
    { "flush", l_flush },
    { "sync", l_sync },
    { "truncate", l_truncate },
    { "_wait", l_wait },
    { "stats", l_stats },
    { "delete_before", l_delete_before },
    { "apply_retention", l_apply_retention },
    { "commit", l_commit },
    { "committed", l_committed },
    { "cursors", l_cursors },
    { "delete_cursor", l_delete_cursor },
    { "close", l_close },
    { NULL, NULL }
};

static const luaL_Reg log_meta[] = {
    { "__gc", l_gc },
    { "__close", l_gc },
    { "__tostring", l_tostring },
    { NULL, NULL }
};

static const luaL_Reg module_funcs[] = {
    { "open_log", l_open_log },
    { "snapshot_manager", l_snapshot_manager },
    { "check_snapshot_id", l_check_id },
    { "crc32c", l_crc32c },
#ifdef TK_FAULT_INJECTION
    { "_fault_arm", l_fault_arm },
    { "_fault_calls", l_fault_calls },
    { "_fault_reset", l_fault_reset },
#endif
    { NULL, NULL }
};

/* Runs once per Lua state; a second run (busted reloading modules, a
 * second VM) finds the metatables in place and leaves them alone. */
static void create_metatables(lua_State *L) {
    if (luaL_newmetatable(L, LOG_MT)) {
        luaL_setfuncs(L, log_meta, 0);
        luaL_newlib(L, log_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, SM_MT)) {
        luaL_setfuncs(L, sm_meta, 0);
        luaL_newlib(L, sm_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, JOB_MT)) {
        luaL_setfuncs(L, job_meta, 0);
        luaL_newlib(L, job_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, ITER_MT)) {
        lua_pushcfunction(L, iter_release);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, iter_release);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
}

TK_EXPORT int luaopen_takhin_core(lua_State *L) {
    create_metatables(L);
    luaL_newlib(L, module_funcs);
    luaL_getmetatable(L, SM_MT);                    /* methods, for takhin/init.lua */
    lua_getfield(L, -1, "__index");
    lua_setfield(L, -3, "SnapshotManager");
    lua_pop(L, 1);
    luaL_getmetatable(L, LOG_MT);
    lua_getfield(L, -1, "__index");
    lua_setfield(L, -3, "Log");
    lua_pop(L, 1);
    luaL_getmetatable(L, JOB_MT);
    lua_getfield(L, -1, "__index");
    lua_setfield(L, -3, "Job");
    lua_pop(L, 1);
    lua_pushliteral(L, TAKHIN_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushinteger(L, TK_FORMAT_VERSION);
    lua_setfield(L, -2, "format_version");
    lua_pushboolean(L, tk_crc32c_hw_available());
    lua_setfield(L, -2, "crc32c_hw");
    return 1;
}
