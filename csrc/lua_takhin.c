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
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"

#include "takhin.h"

#define LOG_MT  "takhin.Log"
#define ITER_MT "takhin.Iter"

#if defined(__GNUC__)
#define TK_EXPORT __attribute__((visibility("default")))
#else
#define TK_EXPORT
#endif

typedef struct lua_log {
    tk_log *log;                /* NULL once closed */
    tk_record rec;              /* reused by read() */
} lua_log;

typedef struct lua_iter {
    tk_iter *it;                /* NULL once finished */
} lua_iter;

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static int push_error(lua_State *L, const tk_err *e) {
    lua_pushnil(L);
    lua_pushstring(L, e->msg);
    lua_pushstring(L, tk_code_name(e->code));
    return 3;
}

static int push_invalid(lua_State *L, const char *msg) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, tk_code_name(TK_INVALID));
    return 3;
}

static lua_log *check_log(lua_State *L, int idx) {
    lua_log *u = (lua_log *)luaL_checkudata(L, idx, LOG_MT);
    if (!u->log) luaL_error(L, "attempt to use a closed takhin.Log");
    return u;
}

/* An integer argument: a number with an exact integer value.  Strings are
 * refused (no silent coercion of "10" into an offset). */
static int64_t check_int64(lua_State *L, int idx) {
    lua_Integer v;
    int ok = 0;
    if (lua_type(L, idx) != LUA_TNUMBER) luaL_typeerror(L, idx, "integer");
    v = lua_tointegerx(L, idx, &ok);
    if (!ok) luaL_argerror(L, idx, "number has no integer representation");
    return (int64_t)v;
}

static int64_t opt_int64(lua_State *L, int idx, int64_t def) {
    return lua_isnoneornil(L, idx) ? def : check_int64(L, idx);
}

static const char *check_string(lua_State *L, int idx, size_t *len) {
    if (lua_type(L, idx) != LUA_TSTRING) luaL_typeerror(L, idx, "string");
    return lua_tolstring(L, idx, len);
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
        lua_Integer v;
        int ok = 0;
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "option '%s': integer expected, got %s", name, luaL_typename(L, -1));
        v = lua_tointegerx(L, -1, &ok);
        if (!ok) luaL_error(L, "option '%s': number has no integer representation", name);
        *out = (int64_t)v;
    }
    lua_pop(L, 1);
    return present;
}

/* ------------------------------------------------------------------ */
/* open_log                                                             */
/* ------------------------------------------------------------------ */

static const char *const log_opt_names[] = {
    "dir", "max_segment_size", "index_interval_bytes", "max_record_size", "sync",
    "readonly", NULL
};

/* Fills o from the options table; returns NULL or an INVALID message. */
static const char *read_log_opts(lua_State *L, int t, tk_log_opts *o, char *buf, size_t cap) {
    int64_t v;
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
            snprintf(buf, cap, "open_log: index_interval_bytes %lld must be >= 1", (long long)v);
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
    lua_getfield(L, t, "sync");
    if (!lua_isnil(L, -1)) {
        const char *s;
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "option 'sync': string expected, got %s", luaL_typename(L, -1));
        s = lua_tostring(L, -1);
        if (strcmp(s, "none") == 0) o->sync = TK_SYNC_NONE;
        else if (strcmp(s, "always") == 0) o->sync = TK_SYNC_ALWAYS;
        else {
            snprintf(buf, cap, "open_log: sync must be \"none\" or \"always\", not \"%s\"", s);
            lua_pop(L, 1);
            return buf;
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "readonly");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TBOOLEAN)
            luaL_error(L, "option 'readonly': boolean expected, got %s", luaL_typename(L, -1));
        o->readonly = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return NULL;
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
    lua_getfield(L, 1, "dir");                          /* stack: opts, dir */
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
        if (lua_type(L, 2) != LUA_TSTRING) luaL_typeerror(L, 2, "string or nil");
        r.key = lua_tolstring(L, 2, &r.key_len);
        r.has_key = 1;
    }
    r.value = check_string(L, 3, &r.value_len);
    r.timestamp = opt_int64(L, 4, -1);
    if (!lua_isnoneornil(L, 4) && r.timestamp < 0) return push_invalid(L, "append: timestamp must be >= 0");
    if (tk_log_append(u->log, &r, 1, &off, &e) != TK_OK) return push_error(L, &e);
    lua_pushinteger(L, (lua_Integer)off);
    return 1;
}

/* Fills r from the table at the top of the stack (batch element i). */
static const char *batch_entry(lua_State *L, int i, tk_rec_in *r) {
    memset(r, 0, sizeof *r);
    if (lua_type(L, -1) != LUA_TTABLE)
        luaL_error(L, "append_batch: element %d: table expected, got %s", i, luaL_typename(L, -1));
    lua_getfield(L, -1, "key");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "append_batch: element %d: key must be a string or nil", i);
        r->key = lua_tolstring(L, -1, &r->key_len);     /* the table keeps it alive */
        r->has_key = 1;
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "value");
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "append_batch: element %d: value must be a string", i);
    r->value = lua_tolstring(L, -1, &r->value_len);
    lua_pop(L, 1);
    lua_getfield(L, -1, "timestamp");
    r->timestamp = -1;
    if (!lua_isnil(L, -1)) {
        lua_Integer v = 0;
        int ok = 0;
        if (lua_type(L, -1) != LUA_TNUMBER || (v = lua_tointegerx(L, -1, &ok), !ok))
            luaL_error(L, "append_batch: element %d: timestamp must be an integer", i);
        if (v < 0) { lua_pop(L, 1); return "append_batch: timestamp must be >= 0"; }
        r->timestamp = (int64_t)v;
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
    n = (size_t)lua_rawlen(L, 2);
    /* Scratch space owned by the GC, so a raise below leaks nothing. */
    recs = (tk_rec_in *)lua_newuserdata(L, (n ? n : 1) * sizeof *recs);   /* stack: log, t, scratch */
    for (size_t i = 0; i < n; i++) {
        const char *bad;
        lua_rawgeti(L, 2, (lua_Integer)(i + 1));        /* stack: log, t, scratch, elem */
        bad = batch_entry(L, (int)(i + 1), &recs[i]);
        lua_pop(L, 1);
        if (bad) return push_invalid(L, bad);
    }
    if (tk_log_append(u->log, recs, n, &first, &e) != TK_OK) return push_error(L, &e);
    lua_pushinteger(L, (lua_Integer)first);
    lua_pushinteger(L, (lua_Integer)(first + (int64_t)n - 1));
    return 2;
}

static int l_truncate(lua_State *L) {
    lua_log *u = check_log(L, 1);
    tk_err e;
    if (tk_log_truncate(u->log, check_int64(L, 2), &e) != TK_OK) return push_error(L, &e);
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
    lua_pushinteger(L, (lua_Integer)r->offset);
    lua_setfield(L, -2, "offset");
    lua_pushinteger(L, (lua_Integer)r->timestamp);
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
    if (tk_log_read(u->log, check_int64(L, 2), &u->rec, &e) != TK_OK) return push_error(L, &e);
    push_record(L, &u->rec);
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
    int64_t from = opt_int64(L, 2, tk_log_base_offset(u->log));
    int64_t to = opt_int64(L, 3, -1);
    lua_iter *it;
    tk_err e;
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
    if (tk_log_offset_for_time(u->log, check_int64(L, 2), &off, &e) != TK_OK)
        return push_error(L, &e);
    lua_pushinteger(L, (lua_Integer)off);
    return 1;
}

static int l_high_water_mark(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)tk_log_high_water_mark(check_log(L, 1)->log));
    return 1;
}

static int l_base_offset(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)tk_log_base_offset(check_log(L, 1)->log));
    return 1;
}

static int l_num_segments(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)tk_log_num_segments(check_log(L, 1)->log));
    return 1;
}

static int l_size(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)tk_log_size(check_log(L, 1)->log));
    return 1;
}

static int l_dir(lua_State *L) {
    lua_pushstring(L, tk_log_dir(check_log(L, 1)->log));
    return 1;
}

static int l_segments(lua_State *L) {
    lua_log *u = check_log(L, 1);
    size_t n = tk_log_segments(u->log, NULL, 0), got;
    tk_segment_info *info;
    for (;;) {                  /* a read-only handle may see the log grow */
        info = (tk_segment_info *)lua_newuserdata(L, (n ? n : 1) * sizeof *info);
        got = tk_log_segments(u->log, info, n);
        if (got <= n) break;
        lua_pop(L, 1);
        n = got;
    }
    lua_createtable(L, (int)got, 0);
    for (size_t i = 0; i < got; i++) {
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, (lua_Integer)info[i].base_offset);
        lua_setfield(L, -2, "base_offset");
        lua_pushinteger(L, (lua_Integer)info[i].next_offset);
        lua_setfield(L, -2, "next_offset");
        lua_pushinteger(L, (lua_Integer)info[i].size);
        lua_setfield(L, -2, "size");
        lua_pushboolean(L, info[i].active);
        lua_setfield(L, -2, "active");
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
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
    log_release((lua_log *)luaL_checkudata(L, 1, LOG_MT));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_gc(lua_State *L) {
    lua_log *u = (lua_log *)lua_touserdata(L, 1);
    if (u) log_release(u);
    return 0;
}

static int l_tostring(lua_State *L) {
    lua_log *u = (lua_log *)luaL_checkudata(L, 1, LOG_MT);
    if (!u->log) {
        lua_pushliteral(L, "takhin.Log(closed)");
        return 1;
    }
    lua_pushfstring(L, "takhin.Log(%s, offsets %I..%I, %I segments%s)", tk_log_dir(u->log),
                    (lua_Integer)tk_log_base_offset(u->log),
                    (lua_Integer)tk_log_high_water_mark(u->log),
                    (lua_Integer)tk_log_num_segments(u->log),
                    tk_log_readonly(u->log) ? ", read-only" : "");
    return 1;
}

/* ------------------------------------------------------------------ */
/* Module                                                               */
/* ------------------------------------------------------------------ */

static int l_crc32c(lua_State *L) {
    size_t len;
    const char *s = check_string(L, 1, &len);
    int64_t crc = opt_int64(L, 2, 0);
    luaL_argcheck(L, crc >= 0 && crc <= 0xffffffffLL, 2, "CRC out of range");
    lua_pushinteger(L, (lua_Integer)tk_crc32c((uint32_t)crc, s, len));
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
    { "crc32c", l_crc32c },
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
    lua_pushliteral(L, TAKHIN_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushinteger(L, TK_FORMAT_VERSION);
    lua_setfield(L, -2, "format_version");
    lua_pushboolean(L, tk_crc32c_hw_available());
    lua_setfield(L, -2, "crc32c_hw");
    return 1;
}
