/* luahost: see luahost.h.
 *
 * Functions marked [may longjmp] raise Lua errors and must only run inside a
 * protected call; they allocate nothing that a longjmp could leak. */
#include "luahost.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Host modules every state can require (defined in bind_*.c). */
int luaopen_hash(lua_State *L);
int luaopen_json(lua_State *L);
int luaopen_log(lua_State *L);

#define REG_LOADED "sao.loaded"   /* name -> module value */
#define REG_PRELOAD "sao.preload" /* name -> opener */
#define REG_ENTRY "sao.entry"
#define LOADING_MARK "sao.loading"
#define HOOK_EVERY 1000
#define CALLS_PER_CLOCK 64 /* the call hook reads the clock every 64 calls */
#define ARRAY_MT "json.array_mt" /* bind_json.c's array marker */
#define MAX_RESULT_DEPTH 100

struct luahost {
    lua_State *L;
    size_t used, limit;
    char *dir;
    uint64_t deadline_ms; /* 0: no call in progress */
    int budget_ms;
    int over_budget;
    unsigned calls;
};

void luahost_open_bounded_libs(lua_State *L); /* luahost_lib.c */

static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    luahost *h = ud;
    if (ptr == NULL)
        osize = 0;
    if (nsize == 0) {
        free(ptr);
        h->used -= osize;
        return NULL;
    }
    /* The cap holds while rules run; the core's own pushes between calls
     * (inputs, the result guard) never fail on it, so they never raise
     * outside a protected call. */
    if (nsize > osize && h->deadline_ms != 0 && h->used + (nsize - osize) > h->limit)
        return NULL; /* Lua raises "not enough memory" */
    void *p = realloc(ptr, nsize);
    if (p == NULL)
        return NULL;
    h->used = h->used - osize + nsize;
    return p;
}

luahost *luahost_from_state(lua_State *L)
{
    return *(luahost **)lua_getextraspace(L);
}

/* [may longjmp] Pushes "file:line:" of the innermost Lua function on the
 * stack (a C function called from Lua has none of its own). */
static void where_lua(lua_State *L)
{
    lua_Debug ar;
    for (int level = 0; level < 20 && lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
    }
    lua_pushliteral(L, "");
}

static int traceback_handler(lua_State *L);

/* [may longjmp] Raises the budget error and makes sure it sticks: once
 * over, the count hook fires on every instruction, so a script catching the
 * error with pcall cannot keep running. */
static int over_budget(lua_State *L, luahost *h)
{
    if (!h->over_budget) {
        h->over_budget = 1;
        lua_sethook(L, lua_gethook(L), LUA_MASKCOUNT | LUA_MASKCALL, 1);
    }
    where_lua(L);
    lua_pushfstring(L, "stopped: exceeded the time budget of %d ms", h->budget_ms);
    lua_concat(L, 2);
    return lua_error(L);
}

/* [may longjmp] The budget hook: every HOOK_EVERY instructions, and on every
 * function call, Lua or C (a C library loop that calls a metamethod, even a
 * C one, is stopped here too). Calls read the clock every CALLS_PER_CLOCK. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    luahost *h = luahost_from_state(L);
    if (h == NULL || h->deadline_ms == 0)
        return;
    if (ar->event == LUA_HOOKCALL && !h->over_budget && (++h->calls % CALLS_PER_CLOCK) != 0)
        return;
    if (!h->over_budget && util_now_ms() < h->deadline_ms)
        return;
    if (ar->event == LUA_HOOKCALL && lua_getinfo(L, "f", ar)) {
        /* Let the message handler run: it turns this error into a message. */
        int handler = lua_tocfunction(L, -1) == traceback_handler;
        lua_pop(L, 1);
        if (handler)
            return;
    }
    over_budget(L, h);
}

void luahost_check_budget(lua_State *L)
{
    luahost *h = luahost_from_state(L);
    if (h == NULL || h->deadline_ms == 0)
        return;
    if (h->over_budget || util_now_ms() >= h->deadline_ms)
        over_budget(L, h);
}

void luahost_mem_check(lua_State *L, size_t extra)
{
    luahost *h = luahost_from_state(L);
    if (h == NULL || h->deadline_ms == 0)
        return;
    if (extra > h->limit || h->used > h->limit - extra) {
        where_lua(L);
        lua_pushliteral(L, "not enough memory (rules exceeded the memory limit)");
        lua_concat(L, 2);
        lua_error(L);
    }
}

/* 1 if the metatable at idx would make its objects finalized or weak: __gc
 * runs with hooks off (no budget), __close and __mode are not for rules. */
static const char *unsafe_metafield(lua_State *L, int idx)
{
    static const char *const fields[] = {"__gc", "__close", "__mode", NULL};
    idx = lua_absindex(L, idx);
    for (int i = 0; fields[i]; i++) {
        lua_pushstring(L, fields[i]);
        int present = lua_rawget(L, idx) != LUA_TNIL;
        lua_pop(L, 1);
        if (present)
            return fields[i];
    }
    return NULL;
}

int luahost_metatable_unsafe(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TTABLE && unsafe_metafield(L, idx) != NULL;
}

/* [may longjmp] setmetatable(t, mt) without finalizers: Lua marks an object
 * for finalization when its metatable has __gc at this moment, and runs
 * finalizers with hooks off, so a looping __gc would hang the process. */
static int safe_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        const char *f = unsafe_metafield(L, 2);
        if (f)
            return luaL_error(L, "setmetatable: a metatable with %s is not allowed in the rules", f);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* An error outside any protected call: never expected (every entry goes
 * through luahost_pcall). Say so loudly before Lua aborts. */
static int host_panic(lua_State *L)
{
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(error object is not a string)";
    log_error("lua panic: an error outside a protected call; aborting", "error", msg, NULL);
    return 0; /* Lua aborts */
}

/* [may longjmp] __index / __newindex of the globals table. */
static int strict_index(lua_State *L)
{
    return luaL_error(L, "undeclared global '%s'", luaL_tolstring(L, 2, NULL));
}

static int strict_newindex(lua_State *L)
{
    return luaL_error(L, "assignment to undeclared global '%s'", luaL_tolstring(L, 2, NULL));
}

/* [may longjmp] print(...) → one info log line with source=lua. */
static int host_print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    log_info(lua_tostring(L, -1), "source", "lua", NULL);
    return 0;
}

static int valid_module_name(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return 0;
    return 1;
}

/* [may longjmp] require(name): host modules first, then <dir>/<name>.lua. */
static int host_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luahost *h = luahost_from_state(L);

    lua_getfield(L, LUA_REGISTRYINDEX, REG_LOADED);
    int loaded = lua_gettop(L);
    if (lua_getfield(L, loaded, name) != LUA_TNIL) {
        if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), LOADING_MARK) == 0)
            return luaL_error(L, "module '%s' requires itself (require cycle)", name);
        return 1;
    }
    lua_pop(L, 1);

    lua_getfield(L, LUA_REGISTRYINDEX, REG_PRELOAD);
    if (lua_getfield(L, -1, name) == LUA_TFUNCTION) {
        lua_pushstring(L, name);
        lua_call(L, 1, 1);
    } else {
        lua_pop(L, 2);
        if (!valid_module_name(name))
            return luaL_error(L, "module '%s' not found (names are letters, digits and _)", name);
        if (h->dir == NULL)
            return luaL_error(L, "module '%s' not found (no rules directory)", name);
        lua_pushstring(L, LOADING_MARK);
        lua_setfield(L, loaded, name);

        /* Read the file into a Lua-owned buffer so a longjmp leaks nothing. */
        char *path = xasprintf("%s/%s.lua", h->dir, name);
        size_t len = 0;
        char *src = util_read_file(path, &len);
        int read_errno = errno;
        lua_pushstring(L, path);
        free(path);
        if (src == NULL) {
            lua_pushnil(L);
            lua_setfield(L, loaded, name);
            return luaL_error(L, "module '%s' not found: %s: %s", name, lua_tostring(L, -1),
                              strerror(read_errno));
        }
        lua_pushlstring(L, src, len);
        free(src);
        char chunkname[300];
        snprintf(chunkname, sizeof chunkname, "@%s.lua", name);
        size_t srclen;
        const char *s = lua_tolstring(L, -1, &srclen);
        if (luaL_loadbufferx(L, s, srclen, chunkname, "t") != LUA_OK) {
            lua_pushnil(L);
            lua_setfield(L, loaded, name);
            return lua_error(L);
        }
        lua_pushstring(L, name);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
            lua_pushnil(L); /* forget the loading mark so the error is not a "cycle" later */
            lua_setfield(L, loaded, name);
            return lua_error(L);
        }
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, loaded, name);
    return 1;
}

static void remove_global(lua_State *L, const char *name)
{
    lua_pushnil(L);
    lua_setglobal(L, name);
}

luahost *luahost_new(size_t mem_limit)
{
    luahost *h = xcalloc(1, sizeof *h);
    h->limit = mem_limit ? mem_limit : LUAHOST_DEFAULT_MEM_LIMIT;
    h->L = lua_newstate(host_alloc, h);
    if (h->L == NULL) {
        free(h);
        return NULL;
    }
    lua_State *L = h->L;
    *(luahost **)lua_getextraspace(L) = h;

    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},         {LUA_TABLIBNAME, luaopen_table},
        {LUA_STRLIBNAME, luaopen_string},  {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8},   {LUA_COLIBNAME, luaopen_coroutine},
        {NULL, NULL},
    };
    for (const luaL_Reg *lib = libs; lib->func; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    /* No file access, no bytecode, no GC control from scripts. */
    remove_global(L, "dofile");
    remove_global(L, "loadfile");
    remove_global(L, "load");
    remove_global(L, "collectgarbage");
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);

    lua_atpanic(L, host_panic);
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, safe_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    luahost_open_bounded_libs(L);

    lua_pushcfunction(L, host_print);
    lua_setglobal(L, "print");
    lua_pushcfunction(L, host_require);
    lua_setglobal(L, "require");

    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_LOADED);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_PRELOAD);

    luahost_preload(h, "hash", luaopen_hash);
    luahost_preload(h, "json", luaopen_json);
    luahost_preload(h, "log", luaopen_log);

    /* Strict globals: from here on, only what exists may be read or written. */
    lua_pushglobaltable(L);
    lua_newtable(L);
    lua_pushcfunction(L, strict_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, strict_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "strict");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
    return h;
}

void luahost_free(luahost *h)
{
    if (h == NULL)
        return;
    lua_close(h->L);
    free(h->dir);
    free(h);
}

lua_State *luahost_state(luahost *h)
{
    return h->L;
}

void luahost_preload(luahost *h, const char *name, lua_CFunction openf)
{
    lua_getfield(h->L, LUA_REGISTRYINDEX, REG_PRELOAD);
    lua_pushcfunction(h->L, openf);
    lua_setfield(h->L, -2, name);
    lua_pop(h->L, 1);
}

/* Message handler: error value → string with a traceback. Runs under the
 * same budget as the call, so a hostile __tostring cannot hang it. */
static int traceback_handler(lua_State *L)
{
    lua_pushliteral(L, "message");
    if (lua_type(L, 1) == LUA_TTABLE && lua_rawget(L, 1) == LUA_TSTRING) {
        lua_replace(L, 1);
    } else if (lua_type(L, 1) != LUA_TSTRING) {
        lua_settop(L, 1);
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
            lua_replace(L, 1);
        } else if (lua_type(L, 1) == LUA_TNUMBER || lua_type(L, 1) == LUA_TBOOLEAN) {
            luaL_tolstring(L, 1, NULL);
            lua_replace(L, 1);
        } else {
            lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
            lua_replace(L, 1);
        }
    }
    lua_settop(L, 1);
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

int luahost_pcall(lua_State *L, int nargs, int nresults, int budget_ms, char *err, size_t errlen)
{
    luahost *h = luahost_from_state(L);
    if (budget_ms <= 0)
        budget_ms = LUAHOST_DEFAULT_BUDGET_MS;
    int base = lua_gettop(L) - nargs; /* index of the function */
    lua_pushcfunction(L, traceback_handler);
    lua_insert(L, base);

    /* Nested calls (C binding → Lua) keep the outer, earlier deadline. */
    uint64_t saved_deadline = 0;
    int saved_budget = 0, nested = 0;
    if (h) {
        nested = h->deadline_ms != 0;
        saved_deadline = h->deadline_ms;
        saved_budget = h->budget_ms;
        uint64_t deadline = util_now_ms() + (uint64_t)budget_ms;
        if (!nested || deadline < h->deadline_ms) {
            h->deadline_ms = deadline;
            h->budget_ms = budget_ms;
        }
        if (!nested) {
            h->over_budget = 0;
            h->calls = 0;
            lua_sethook(L, budget_hook, LUA_MASKCOUNT | LUA_MASKCALL, HOOK_EVERY);
        }
    }
    int rc = lua_pcall(L, nargs, nresults, base);
    if (h) {
        h->deadline_ms = saved_deadline;
        h->budget_ms = saved_budget;
        if (!nested) {
            lua_sethook(L, NULL, 0, 0);
            h->over_budget = 0;
        }
    }
    lua_remove(L, base);
    if (rc == LUA_OK)
        return 0;

    const char *msg = lua_tostring(L, -1);
    if (msg == NULL)
        msg = rc == LUA_ERRMEM ? "not enough memory (rules exceeded the memory limit)" : "unknown error";
    if (rc == LUA_ERRMEM)
        msg = "not enough memory (rules exceeded the memory limit)";
    /* First line is "file:line: message"; the rest is the traceback. */
    const char *nl = strchr(msg, '\n');
    size_t first = nl ? (size_t)(nl - msg) : strlen(msg);
    util_seterr(err, errlen, "%.*s", (int)first, msg);
    /* Only the stack: the message may quote data the script was given (a
     * rule's error can hold a credential); it goes to err, whose owner knows
     * what to scrub. */
    if (nl && log_enabled(LOG_DEBUG))
        log_debug("lua traceback", "traceback", nl + 1, NULL);
    lua_pop(L, 1);
    return -1;
}

/* [may longjmp] Refuses anything but plain data in the value at idx: no
 * metatable other than json.array's marker, at most MAX_RESULT_DEPTH levels.
 * seen: a table of the tables already walked (each is walked once). path:
 * where we are, for the message (a C array: nothing to free on a raise). */
static void check_plain(lua_State *L, int idx, int seen, int depth, char *path, size_t plen, size_t cap,
                        const char *where, const char *what, unsigned long *nodes)
{
    if (lua_type(L, idx) != LUA_TTABLE)
        return;
    idx = lua_absindex(L, idx);
    if (depth > MAX_RESULT_DEPTH)
        luaL_error(L, "%s: %s() returned data nested deeper than %d levels", where, what, MAX_RESULT_DEPTH);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, seen) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    if (lua_getmetatable(L, idx)) {
        luaL_getmetatable(L, ARRAY_MT);
        int marker = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (!marker)
            luaL_error(L, "%s: %s() returned a table with a metatable at %s (rules return plain data; "
                       "only json.array() may mark a table)", where, what, plen ? path : "its top level");
    }
    if (++*nodes % 256 == 0)
        luahost_check_budget(L);
    luaL_checkstack(L, 6, "result too deep");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t n = plen;
        if (lua_type(L, -2) == LUA_TSTRING && n < cap)
            n += (size_t)snprintf(path + n, cap - n, ".%.40s", lua_tostring(L, -2));
        else if (lua_isinteger(L, -2) && n < cap)
            n += (size_t)snprintf(path + n, cap - n, "[%lld]", (long long)lua_tointeger(L, -2));
        if (n >= cap)
            n = cap - 1;
        check_plain(L, -2, seen, depth + 1, path, n, cap, where, what, nodes); /* a table key */
        check_plain(L, -1, seen, depth + 1, path, n, cap, where, what, nodes);
        path[plen] = '\0';
        lua_pop(L, 1);
    }
}

/* [may longjmp] The protected half of luahost_call_rule: calls the function
 * at 1 with the rest as arguments and checks its one result there. */
static int guarded_call(lua_State *L)
{
    const char *what = lua_tostring(L, lua_upvalueindex(1));
    char where[LUA_IDSIZE + 24] = "rules";
    if (lua_isfunction(L, 1)) {
        lua_Debug ar;
        lua_pushvalue(L, 1);
        if (lua_getinfo(L, ">S", &ar))
            snprintf(where, sizeof where, "%s:%d", ar.short_src, ar.linedefined);
    } else {
        return luaL_error(L, "rules: %s is a %s, not a function", what, luaL_typename(L, 1));
    }
    lua_call(L, lua_gettop(L) - 1, 1);
    lua_newtable(L);
    char path[200] = "";
    unsigned long nodes = 0;
    check_plain(L, -2, lua_gettop(L), 0, path, 0, sizeof path, where, what, &nodes);
    lua_pop(L, 1);
    return 1;
}

int luahost_call_rule(lua_State *L, const char *what, int nargs, int budget_ms, char *err, size_t errlen)
{
    int fn = lua_gettop(L) - nargs;
    lua_pushstring(L, what);
    lua_pushcclosure(L, guarded_call, 1);
    lua_insert(L, fn);
    return luahost_pcall(L, nargs + 1, 1, budget_ms, err, errlen);
}

int luahost_call(luahost *h, int nargs, int nresults, int budget_ms, char *err, size_t errlen)
{
    return luahost_pcall(h->L, nargs, nresults, budget_ms, err, errlen);
}

int luahost_load_dir(luahost *h, const char *dir, const char *entry, int budget_ms, char *err,
                     size_t errlen)
{
    lua_State *L = h->L;
    free(h->dir);
    h->dir = xstrdup(dir);
    lua_getglobal(L, "require");
    lua_pushstring(L, entry);
    if (luahost_pcall(L, 1, 1, budget_ms, err, errlen) < 0)
        return -1;
    /* The core reads the entry's fields raw; a metatable there would be
     * the rules hiding what they provide. */
    if (lua_type(L, -1) == LUA_TTABLE && lua_getmetatable(L, -1)) {
        lua_pop(L, 2);
        char *path = xasprintf("%s/%s.lua", dir, entry);
        size_t len = 0;
        char *src = util_read_file(path, &len);
        int line = 1, last = 1; /* the last non-blank line: where `return M` is */
        for (size_t i = 0; src && i < len; i++) {
            if (src[i] == '\n')
                line++;
            else if (src[i] != ' ' && src[i] != '\t' && src[i] != '\r')
                last = line;
        }
        free(src);
        free(path);
        util_seterr(err, errlen, "%s.lua:%d: the table %s.lua returns has a metatable (refused: the core reads "
                    "the rules' functions raw, return a plain table)", entry, last, entry);
        return -1;
    }
    lua_setfield(L, LUA_REGISTRYINDEX, REG_ENTRY);
    return 0;
}

void luahost_push_entry(luahost *h)
{
    lua_getfield(h->L, LUA_REGISTRYINDEX, REG_ENTRY);
}

void luahost_push_entry_field(luahost *h, const char *field)
{
    luahost_push_entry(h);
    if (lua_type(h->L, -1) == LUA_TTABLE) {
        lua_pushstring(h->L, field);
        lua_rawget(h->L, -2);
        lua_remove(h->L, -2);
    } else {
        lua_pop(h->L, 1);
        lua_pushnil(h->L);
    }
}

static int lua_file_filter(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    if (n < 5 || strcmp(d->d_name + n - 4, ".lua") != 0)
        return 0;
    for (size_t i = 0; i < n - 4; i++) {
        char c = d->d_name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return 0;
    }
    return 1;
}

int luahost_dir_bundle(const char *dir, buf *all, char *err, size_t errlen)
{
    struct dirent **names = NULL;
    int n = scandir(dir, &names, lua_file_filter, alphasort);
    if (n < 0) {
        util_seterr(err, errlen, "cannot read rules directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char *path = xasprintf("%s/%s", dir, names[i]->d_name);
        size_t len;
        char *data = util_read_file(path, &len);
        if (data == NULL) {
            util_seterr(err, errlen, "cannot read %s: %s", path, strerror(errno));
            rc = -1;
        } else {
            buf_puts(all, names[i]->d_name);
            buf_putc(all, '\0');
            buf_append(all, data, len);
            buf_putc(all, '\0');
        }
        free(data);
        free(path);
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

char *luahost_bundle_unpack(const buf *b, const char *base)
{
    char *dir = xasprintf("%s/rollout-from-XXXXXX", base);
    if (mkdtemp(dir) == NULL) {
        free(dir);
        return NULL;
    }
    size_t at = 0;
    while (at < b->len) {
        const char *name = b->data + at;
        size_t nlen = strnlen(name, b->len - at);
        if (at + nlen + 1 >= b->len + 1 || strchr(name, '/') || name[0] == '.')
            break;
        const char *data = name + nlen + 1;
        size_t left = b->len - (at + nlen + 1), dlen = strnlen(data, left);
        char *path = xasprintf("%s/%s", dir, name);
        FILE *f = fopen(path, "wb");
        if (f) {
            fwrite(data, 1, dlen, f);
            fclose(f);
        }
        free(path);
        at += nlen + 1 + dlen + 1;
    }
    return dir;
}

void luahost_bundle_remove(const char *dir, const buf *b)
{
    size_t at = 0;
    while (at < b->len) {
        const char *name = b->data + at;
        size_t nlen = strnlen(name, b->len - at);
        const char *data = name + nlen + 1;
        size_t dlen = at + nlen + 1 < b->len ? strnlen(data, b->len - (at + nlen + 1)) : 0;
        if (strchr(name, '/') == NULL && name[0] != '.') {
            char *path = xasprintf("%s/%s", dir, name);
            unlink(path);
            free(path);
        }
        at += nlen + 1 + dlen + 1;
    }
    rmdir(dir);
}

int luahost_dir_version(const char *dir, char out[65], char *err, size_t errlen)
{
    buf all = {0};
    int rc = luahost_dir_bundle(dir, &all, err, errlen);
    if (rc == 0)
        util_sha256_hex(all.data ? all.data : "", all.len, out);
    buf_free(&all);
    return rc;
}
