/*
 * compat.h -- the Lua 5.1 / LuaJIT differences the binding needs, in one
 * place (named compat_* so they never clash with what a host exports).
 *
 * Integers: Lua 5.4 has 64-bit integers.  LuaJIT has only doubles, exact
 * up to 2^53, so an offset or timestamp beyond that is refused with an
 * error instead of being silently rounded.
 */
#ifndef TK_COMPAT_H
#define TK_COMPAT_H

#include <math.h>
#include <stdint.h>

#include "lauxlib.h"
#include "lua.h"

#if LUA_VERSION_NUM >= 503

#define compat_rawlen(L, i) lua_rawlen(L, i)

/* 1 and *out set when the value at idx is a number with an exact integer value. */
static inline int compat_toint64(lua_State *L, int idx, int64_t *out) {
    int ok = 0;
    lua_Integer v = lua_tointegerx(L, idx, &ok);
    *out = (int64_t)v;
    return ok;
}

static inline void compat_pushint64(lua_State *L, int64_t v) {
    lua_pushinteger(L, (lua_Integer)v);
}

#else   /* Lua 5.1, LuaJIT */

#define COMPAT_EXACT_MAX 9007199254740992.0             /* 2^53 */
#define compat_rawlen(L, i) lua_objlen(L, i)

/* 2^53 itself is refused too: 2^53 + 1 written in a script arrives here
 * already rounded to 2^53, and cannot be told from it. */
static inline int compat_toint64(lua_State *L, int idx, int64_t *out) {
    lua_Number d = lua_tonumber(L, idx);
    if (d != floor(d) || fabs(d) >= COMPAT_EXACT_MAX) return 0;
    *out = (int64_t)d;
    return 1;
}

static inline void compat_pushint64(lua_State *L, int64_t v) {
    if (v > (int64_t)COMPAT_EXACT_MAX || v < -(int64_t)COMPAT_EXACT_MAX)
        luaL_error(L, "integer %lld is beyond 2^53 and cannot be represented exactly "
                   "by this Lua (LuaJIT numbers are doubles)", (long long)v);
    lua_pushnumber(L, (lua_Number)v);
}

#endif

/* t[i], running __index as the table's own code would. */
static inline int compat_geti(lua_State *L, int t, int64_t i) {
#if LUA_VERSION_NUM >= 503
    return lua_geti(L, t, (lua_Integer)i);
#else
    lua_pushinteger(L, (lua_Integer)i);
    lua_gettable(L, t < 0 ? t - 1 : t);
    return lua_type(L, -1);
#endif
}

/* A full userdata with one uservalue (a table), and setting it from the
 * top of the stack (popped). */
#if LUA_VERSION_NUM >= 504
#define compat_newuserdata(L, size) lua_newuserdatauv(L, size, 1)
#define compat_setuservalue(L, idx) lua_setiuservalue(L, idx, 1)
#define compat_getuservalue(L, idx) lua_getiuservalue(L, idx, 1)
#else
#define compat_newuserdata(L, size) lua_newuserdata(L, size)
#define compat_setuservalue(L, idx) lua_setfenv(L, idx)
#define compat_getuservalue(L, idx) lua_getfenv(L, idx)
#endif

/* luaL_typeerror is 5.4-only; this one words it the same way. */
static inline int compat_typeerror(lua_State *L, int arg, const char *tname) {
    const char *msg = lua_pushfstring(L, "%s expected, got %s", tname, luaL_typename(L, arg));
    return luaL_argerror(L, arg, msg);
}

/* An integer argument: a number with an exact integer value.  Strings are
 * refused (no silent coercion of "10" into an offset). */
static inline int64_t compat_checkint64(lua_State *L, int idx) {
    int64_t v = 0;
    if (lua_type(L, idx) != LUA_TNUMBER) compat_typeerror(L, idx, "integer");
    if (!compat_toint64(L, idx, &v)) {
#if LUA_VERSION_NUM < 503
        lua_Number d = lua_tonumber(L, idx);
        if (d == floor(d) && fabs(d) >= COMPAT_EXACT_MAX)
            luaL_argerror(L, idx, "integer at or beyond 2^53: a LuaJIT number cannot hold it "
                          "exactly (2^53 + 1 reads as 2^53)");
#endif
        luaL_argerror(L, idx, "number has no exact integer representation");
    }
    return v;
}

static inline int64_t compat_optint64(lua_State *L, int idx, int64_t def) {
    return lua_isnoneornil(L, idx) ? def : compat_checkint64(L, idx);
}

#endif
