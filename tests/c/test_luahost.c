/* The Lua host: sandbox, strict globals, time and memory budgets, errors
 * with file:line, require from a directory, and reload keeping the last good. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "luahost.h"
#include "rules.h"
#include "util.h"

static char tmproot[] = "/tmp/sao-luahost-XXXXXX";

static char *mkdir_rules(const char *name)
{
    char *dir = xasprintf("%s/%s", tmproot, name);
    mkdir(dir, 0755);
    return dir;
}

static void write_file(const char *dir, const char *name, const char *content)
{
    char *p = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    fputs(content, f);
    fclose(f);
    free(p);
}

/* Runs a chunk in a fresh host under the budget; returns 0/-1 like luahost_pcall. */
static int run_chunk(const char *code, int budget_ms, char *err, size_t errlen)
{
    luahost *h = luahost_new(32u * 1024 * 1024);
    lua_State *L = luahost_state(h);
    int rc;
    if (luaL_loadbufferx(L, code, strlen(code), "@chunk.lua", "t") != LUA_OK) {
        util_seterr(err, errlen, "%s", lua_tostring(L, -1));
        rc = -1;
    } else {
        rc = luahost_pcall(L, 0, 0, budget_ms, err, errlen);
    }
    luahost_free(h);
    return rc;
}

static void test_sandbox_has_no_escape_hatches(void)
{
    char err[512];
    const char *absent[] = {"io", "os", "package", "debug", "dofile", "loadfile", "load",
                            "collectgarbage", "string.dump", NULL};
    for (int i = 0; absent[i]; i++) {
        char code[256];
        snprintf(code, sizeof code, "local x = %s", absent[i]);
        int rc = run_chunk(code, 200, err, sizeof err);
        if (strchr(absent[i], '.')) { /* a field: must be nil, not an error */
            snprintf(code, sizeof code, "assert(%s == nil, 'present')", absent[i]);
            rc = run_chunk(code, 200, err, sizeof err);
            CHECK(rc == 0);
        } else {
            CHECK(rc == -1);
            CHECK_CONTAINS(err, "undeclared global");
        }
    }
    CHECK(run_chunk("return os.execute('touch /tmp/sao-pwned')", 200, err, sizeof err) == -1);
    CHECK(access("/tmp/sao-pwned", F_OK) != 0);
    CHECK(run_chunk("require('os')", 200, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "not found");
    CHECK(run_chunk("require('../../etc/passwd')", 200, err, sizeof err) == -1);
}

static void test_strict_globals_name_file_and_line(void)
{
    char err[512];
    CHECK(run_chunk("local a = 1\nlocal b = undefined_thing", 200, err, sizeof err) == -1);
    CHECK_STR(err, "chunk.lua:2: undeclared global 'undefined_thing'");
    CHECK(run_chunk("\n\nnew_global = 5", 200, err, sizeof err) == -1);
    CHECK_STR(err, "chunk.lua:3: assignment to undeclared global 'new_global'");
    CHECK(run_chunk("setmetatable(_G, nil)", 200, err, sizeof err) == -1);
}

static void test_infinite_loop_is_stopped_within_budget(void)
{
    char err[512];
    uint64_t t0 = util_now_ms();
    CHECK(run_chunk("local i = 0\nwhile true do i = i + 1 end", 100, err, sizeof err) == -1);
    uint64_t took = util_now_ms() - t0;
    CHECK(took < 1000);
    CHECK_CONTAINS(err, "chunk.lua:2:");
    CHECK_CONTAINS(err, "exceeded the time budget of 100 ms");

    /* A loop that catches the budget error with pcall is stopped too. */
    t0 = util_now_ms();
    CHECK(run_chunk("while true do pcall(function() while true do end end) end", 100, err,
                    sizeof err) == -1);
    CHECK(util_now_ms() - t0 < 1000);
    CHECK_CONTAINS(err, "exceeded the time budget");
}

static void test_memory_cap(void)
{
    char err[512];
    CHECK(run_chunk("local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end", 5000,
                    err, sizeof err) == -1);
    CHECK_CONTAINS(err, "memory");
    CHECK(run_chunk("local s = string.rep('x', 1 << 40)", 1000, err, sizeof err) == -1);
}

static void test_error_objects(void)
{
    char err[512];
    CHECK(run_chunk("error({message = 'structured failure', code = 'E1'})", 200, err, sizeof err) == -1);
    CHECK_STR(err, "structured failure");
    CHECK(run_chunk("error(setmetatable({}, {__tostring = function() while true do end end}))", 100,
                    err, sizeof err) == -1);
    CHECK(run_chunk("error(42)", 200, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "42");
}

static void test_require_from_dir_and_reload_keeps_last_good(void)
{
    config cfg;
    char err[1024];
    CHECK(config_load(&cfg, 0, NULL, NULL, NULL, err, sizeof err) == 0);

    char *good = mkdir_rules("good");
    write_file(good, "helper.lua", "local M = {}\nfunction M.name(id) return 'w-' .. id end\nreturn M\n");
    write_file(good, "rules.lua",
               "local helper = require('helper')\nlocal M = {}\n"
               "function M.worker_name(id) return helper.name(id) end\n"
               "function M.deployment() return {} end\n"
               "function M.credentials_fingerprint() return '' end\n"
               "function M.plan() return {} end\n"
               "function M.self_check(ctx) return ctx.namespace ~= nil end\nreturn M\n");
    char *broken = mkdir_rules("broken");
    write_file(broken, "rules.lua", "local M = {}\nfunction M.plan(\nreturn M\n");
    char *looping = mkdir_rules("looping");
    write_file(looping, "rules.lua", "local M = {}\nwhile true do end\nreturn M\n");
    char *failing = mkdir_rules("failing");
    write_file(failing, "rules.lua",
               "local M = {}\nfor _, f in ipairs({'plan','deployment','worker_name','credentials_fingerprint'}) do\n"
               "  M[f] = function() end\nend\n"
               "function M.self_check() return nil, 'example 3: wrong name' end\nreturn M\n");

    rules *r = rules_new(&cfg);
    CHECK(rules_reload(r, good, err, sizeof err) == 0);
    char v1[65];
    strcpy(v1, rules_version(r));
    CHECK(strlen(v1) == 64);

    CHECK(rules_reload(r, broken, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "rules.lua:3:");
    CHECK(rules_reload(r, looping, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "rules.lua:2:");
    CHECK_CONTAINS(err, "time budget");
    CHECK(rules_reload(r, failing, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "example 3: wrong name");
    CHECK(rules_last_error(r) != NULL);

    /* The previous rules still answer. */
    CHECK_STR(rules_version(r), v1);
    luahost *h = rules_host(r);
    lua_State *L = luahost_state(h);
    luahost_push_entry_field(h, "worker_name");
    lua_pushstring(L, "42");
    CHECK(luahost_pcall(L, 1, 1, 100, err, sizeof err) == 0);
    CHECK_STR(lua_tostring(L, -1), "w-42");
    lua_pop(L, 1);
    CHECK(rules_reload_count(r, 1) == 1 && rules_reload_count(r, 0) == 3);

    rules_free(r);
    config_free(&cfg);
    free(good);
    free(broken);
    free(looping);
    free(failing);
}

int main(void)
{
    if (mkdtemp(tmproot) == NULL)
        return 1;
    RUN(test_sandbox_has_no_escape_hatches);
    RUN(test_strict_globals_name_file_and_line);
    RUN(test_infinite_loop_is_stopped_within_budget);
    RUN(test_memory_cap);
    RUN(test_error_objects);
    RUN(test_require_from_dir_and_reload_keeps_last_good);
    char *cmd = xasprintf("rm -rf %s", tmproot);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup failed\n");
    free(cmd);
    return check_summary();
}
