/* bind_hash: the Lua `hash` module.
 *   hash.sha256(s) -> 64 lowercase hex chars */
#include <lauxlib.h>

#include "util.h"

/* [may longjmp] */
static int hash_sha256(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[65];
    util_sha256_hex(s, n, hex);
    lua_pushlstring(L, hex, 64);
    return 1;
}

static const luaL_Reg hash_funcs[] = {
    {"sha256", hash_sha256},
    {NULL, NULL},
};

int luaopen_hash(lua_State *L)
{
    luaL_newlib(L, hash_funcs);
    return 1;
}
