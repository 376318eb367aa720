/* bind_json: the Lua `json` module.
 *
 *   json.encode(v)   canonical JSON: object keys sorted, so equal tables
 *                    give equal text (the rules hash it)
 *   json.decode(s)   value, or nil + message; arrays carry json.array_mt so
 *                    that [] decodes and encodes back as [] (Kubernetes cares)
 *   json.array(t)    marks t as an array (returns t)
 *   json.null        sentinel for JSON null (the same light userdata as cjson.null)
 *
 * Encoding rules: a table marked with json.array_mt, or a non-empty table
 * whose keys are exactly 1..n, is an array; any other table is an object and
 * must have string keys. Cycles and nesting past 128 levels are errors. */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "luahost.h"
#include "util.h"

#define ARRAY_MT "json.array_mt"
#define MAX_DEPTH 128

static int is_array_marked(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return 0;
    luaL_getmetatable(L, ARRAY_MT);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

/* Returns n > 0 if the table at idx is a plain sequence 1..n, else 0. */
static lua_Integer sequence_length(lua_State *L, int idx)
{
    lua_Integer n = 0, max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1)) {
            lua_pop(L, 1);
            return 0;
        }
        lua_Integer k = lua_tointeger(L, -1);
        if (k < 1) {
            lua_pop(L, 1);
            return 0;
        }
        if (k > max)
            max = k;
        n++;
    }
    return n == max ? n : 0;
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* [may longjmp] Encodes the value at idx onto b. b's memory is anchored in a
 * userdata owned by the caller's stack frame, so errors leak nothing. */
static void encode(lua_State *L, int idx, buf *b, int depth)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL: buf_puts(b, "null"); return;
    case LUA_TBOOLEAN: buf_puts(b, lua_toboolean(L, idx) ? "true" : "false"); return;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            buf_puts(b, "null");
            return;
        }
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            buf_printf(b, "%lld", (long long)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d))
                luaL_error(L, "json.encode: cannot encode %s", isnan(d) ? "NaN" : "infinity");
            if (d == floor(d) && fabs(d) < 1e15)
                buf_printf(b, "%lld", (long long)d);
            else
                buf_printf(b, "%.17g", d);
        }
        return;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        buf_json_string(b, s, n);
        return;
    }
    case LUA_TTABLE: {
        /* A C loop: the hooks never see it. Shared subtables can make the
         * output exponential in the input, so the budget and the memory cap
         * are checked here, with the output counted as the rules' memory. */
        luahost_check_budget(L);
        luahost_mem_check(L, b->len);
        if (depth >= MAX_DEPTH)
            luaL_error(L, "json.encode: nesting deeper than %d (a cycle?)", MAX_DEPTH);
        luaL_checkstack(L, 6, "json.encode");
        lua_Integer n = is_array_marked(L, idx) ? (lua_Integer)lua_rawlen(L, idx) : sequence_length(L, idx);
        if (n > 0 || is_array_marked(L, idx)) {
            buf_putc(b, '[');
            for (lua_Integer i = 1; i <= n; i++) {
                if (i > 1)
                    buf_putc(b, ',');
                lua_rawgeti(L, idx, i);
                encode(L, -1, b, depth + 1);
                lua_pop(L, 1);
            }
            buf_putc(b, ']');
            return;
        }
        /* Object: collect keys into a Lua-owned array, sort, emit. */
        size_t count = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "json.encode: object keys must be strings (got a %s key)",
                           luaL_typename(L, -1));
            count++;
        }
        const char **keys = lua_newuserdatauv(L, (count ? count : 1) * sizeof *keys, 0);
        size_t i = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            keys[i++] = lua_tostring(L, -1); /* anchored: the key stays in the table */
        }
        qsort(keys, count, sizeof *keys, key_cmp);
        buf_putc(b, '{');
        for (i = 0; i < count; i++) {
            if (i)
                buf_putc(b, ',');
            buf_json_string(b, keys[i], strlen(keys[i]));
            buf_putc(b, ':');
            lua_pushstring(L, keys[i]);
            lua_rawget(L, idx);
            encode(L, -1, b, depth + 1);
            lua_pop(L, 1);
        }
        buf_putc(b, '}');
        lua_pop(L, 1); /* keys */
        return;
    }
    default: break;
    }
    luaL_error(L, "json.encode: cannot encode a %s value", luaL_typename(L, idx));
}

static int buf_gc(lua_State *L)
{
    buf_free(lua_touserdata(L, 1));
    return 0;
}

/* [may longjmp] json.encode(value) -> string. Exported for the core, which
 * calls it through luahost_pcall to encode what the rules return. */
int json_lua_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    buf *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, "json.buf")) {
        lua_pushcfunction(L, buf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    encode(L, 1, b, 0);
    lua_pushlstring(L, b->data ? b->data : "", b->len);
    buf_free(b);
    return 1;
}

static void set_array_mt(lua_State *L);

/* [may longjmp] Pushes a DOM value as Lua. */
static void push_value(lua_State *L, const json_value *v, int depth)
{
    luaL_checkstack(L, 4, "json.decode: nesting too deep");
    switch (json_typeof(v)) {
    case JSON_NULL: lua_pushlightuserdata(L, NULL); break;
    case JSON_BOOL: lua_pushboolean(L, json_bool(v, 0)); break;
    case JSON_NUMBER: {
        double d = json_number(v, 0);
        if (d == floor(d) && fabs(d) < 9.007199254740992e15)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, d);
        break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string(v), json_string_len(v)); break;
    case JSON_ARRAY: {
        size_t n = json_len(v);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            push_value(L, json_at(v, i), depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        set_array_mt(L);
        break;
    }
    case JSON_OBJECT: {
        size_t n = json_len(v);
        lua_createtable(L, 0, (int)n);
        for (size_t i = 0; i < n; i++) {
            push_value(L, json_at(v, i), depth + 1);
            lua_setfield(L, -2, json_key_at(v, i));
        }
        break;
    }
    }
}

static int dom_gc(lua_State *L)
{
    json_value **p = lua_touserdata(L, 1);
    json_free(*p);
    *p = NULL;
    return 0;
}

/* [may longjmp] json.decode(s) -> value | nil, err */
static int json_decode_l(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char err[160];
    /* Anchor the DOM in a userdata so a memory error while pushing frees it. */
    json_value **p = lua_newuserdatauv(L, sizeof *p, 0);
    *p = NULL;
    if (luaL_newmetatable(L, "json.dom")) {
        lua_pushcfunction(L, dom_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    luahost_mem_check(L, 4 * n); /* the DOM is C memory made for the rules */
    *p = json_parse(s, n, err, sizeof err);
    if (*p == NULL) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    push_value(L, *p, 0);
    json_free(*p);
    *p = NULL;
    return 1;
}

/* [may longjmp] Sets the array marker on the table at the top. The marker is
 * reachable from the rules (json.array_mt): one given a __gc would make every
 * marked table a finalizer that runs without a budget. */
static void set_array_mt(lua_State *L)
{
    luaL_getmetatable(L, ARRAY_MT);
    if (luahost_metatable_unsafe(L, -1))
        luaL_error(L, "json: json.array_mt was given __gc, __close or __mode (not allowed)");
    lua_setmetatable(L, -2);
}

/* [may longjmp] json.array(t) -> t */
static int json_array_l(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    set_array_mt(L);
    return 1;
}

static int json_is_array_l(lua_State *L)
{
    lua_pushboolean(L, lua_type(L, 1) == LUA_TTABLE && is_array_marked(L, 1));
    return 1;
}

static const luaL_Reg json_funcs[] = {
    {"encode", json_lua_encode},
    {"decode", json_decode_l},
    {"array", json_array_l},
    {"is_array", json_is_array_l},
    {NULL, NULL},
};

int luaopen_json(lua_State *L)
{
    luaL_newmetatable(L, ARRAY_MT);
    lua_pushliteral(L, "json.array");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    luaL_newlib(L, json_funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    luaL_getmetatable(L, ARRAY_MT);
    lua_setfield(L, -2, "array_mt");
    return 1;
}
