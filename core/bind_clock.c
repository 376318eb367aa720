/* bind_clock: the Lua `clock` module (REPL and tools; rules get the time in ctx.now).
 *   clock.now() -> wall-clock seconds since the epoch (float)
 *   clock.monotonic_ms() -> integer milliseconds from an arbitrary start
 *   clock.sleep(seconds) */
#include <lauxlib.h>
#include <time.h>

#include "util.h"

static int clock_now(lua_State *L)
{
    lua_pushnumber(L, (double)util_wall_ms() / 1000.0);
    return 1;
}

static int clock_monotonic_ms(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)util_now_ms());
    return 1;
}

/* [may longjmp] */
static int clock_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    if (s > 0) {
        struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static const luaL_Reg clock_funcs[] = {
    {"now", clock_now},
    {"monotonic_ms", clock_monotonic_ms},
    {"sleep", clock_sleep},
    {NULL, NULL},
};

int luaopen_clock(lua_State *L)
{
    luaL_newlib(L, clock_funcs);
    return 1;
}
