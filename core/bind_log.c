/* bind_log: the Lua `log` module.
 *   log.info(msg [, fields])  (also debug, warn, error)
 * fields is a table of string keys; values are converted with tostring.
 * Never pass credential values (DESIGN.md §5.4). */
#include <lauxlib.h>

#include "log.h"

#define MAX_FIELDS 32

/* [may longjmp] */
static int log_at(lua_State *L, enum log_level level)
{
    const char *msg = luaL_checkstring(L, 1);
    if (!log_enabled(level))
        return 0;
    const char *keys[MAX_FIELDS], *values[MAX_FIELDS];
    int n = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_settop(L, 2);
        lua_pushnil(L);
        while (n < MAX_FIELDS && lua_next(L, 2)) {
            if (lua_type(L, -2) == LUA_TSTRING) {
                keys[n] = lua_tostring(L, -2);
                /* luaL_tolstring pushes a string that stays on the stack (anchored) */
                values[n] = luaL_tolstring(L, -1, NULL);
                lua_insert(L, 3); /* park the value string below the iteration state */
                n++;
            }
            lua_pop(L, 1);
        }
    }
    log_msgv(level, msg, n, keys, values);
    return 0;
}

static int log_debug_l(lua_State *L) { return log_at(L, LOG_DEBUG); }
static int log_info_l(lua_State *L) { return log_at(L, LOG_INFO); }
static int log_warn_l(lua_State *L) { return log_at(L, LOG_WARN); }
static int log_error_l(lua_State *L) { return log_at(L, LOG_ERROR); }

static const luaL_Reg log_funcs[] = {
    {"debug", log_debug_l},
    {"info", log_info_l},
    {"warn", log_warn_l},
    {"error", log_error_l},
    {NULL, NULL},
};

int luaopen_log(lua_State *L)
{
    luaL_newlib(L, log_funcs);
    return 1;
}
