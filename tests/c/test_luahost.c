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

/* A copy of the shipped rules in tmproot/name; extra (if any) is inserted in
 * rules.lua before its final `return M`. */
static char *copy_shipped_rules(const char *src, const char *name, const char *extra)
{
    static const char *const files[] = {"deployment.lua", "examples.lua", "fingerprint.lua", "naming.lua",
                                        "plan.lua", "rollout.lua", "rules.lua", "validate.lua", NULL};
    char *dir = mkdir_rules(name);
    for (int i = 0; files[i]; i++) {
        char *path = xasprintf("%s/%s", src, files[i]);
        size_t len;
        char *text = util_read_file(path, &len);
        CHECK(text != NULL);
        if (extra && strcmp(files[i], "rules.lua") == 0) {
            char *ret = strstr(text, "\nreturn M\n");
            CHECK(ret != NULL);
            *ret = '\0';
            char *joined = xasprintf("%s\n%s\nreturn M\n", text, extra);
            write_file(dir, files[i], joined);
            free(joined);
        } else {
            write_file(dir, files[i], text ? text : "");
        }
        free(text);
        free(path);
    }
    return dir;
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

    /* Hot reload makes check-rules' check (issue 16): rules must render
     * valid Deployments for the samples, so "good" is the shipped rules. */
    char *good = copy_shipped_rules(cfg.rules_dir, "good", NULL);
    char *broken = mkdir_rules("broken");
    write_file(broken, "rules.lua", "local M = {}\nfunction M.plan(\nreturn M\n");
    char *looping = mkdir_rules("looping");
    write_file(looping, "rules.lua", "local M = {}\nwhile true do end\nreturn M\n");
    char *failing = copy_shipped_rules(cfg.rules_dir, "failing",
                                       "function M.self_check() return nil, 'example 3: wrong name' end\n");

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
    CHECK_STR(lua_tostring(L, -1), "sync-airbnb-worker-42");
    lua_pop(L, 1);
    CHECK(rules_reload_count(r, 1) == 1 && rules_reload_count(r, 0) == 3);

    rules_free(r);
    config_free(&cfg);
    free(good);
    free(broken);
    free(looping);
    free(failing);
}

/* Issue 16: loops inside C library functions stop at the budget too. */
static void test_budget_holds_inside_c_functions(void)
{
    static const char *const cases[] = {
        "string.find(string.rep('a', 50000), '.-.-.-.-.-.-.-.-b')",
        "string.gsub(string.rep('a', 20000), '.-.-.-.-.-b', 'x')",
        "for _ in string.gmatch(string.rep('a', 20000), '.-.-.-.-.-b') do end",
        "string.find(string.rep('a', 4000000), string.rep('a', 2000000) .. 'b', 1, true)",
        "for _ = 1, 1e12 do string.rep('', 1 << 60) end",
        "table.move({}, 1, 1 << 50, 1)",
        "table.remove(setmetatable({}, { __len = function() return 1 << 50 end }), 1)",
        "table.insert(setmetatable({}, { __len = function() return 1 << 50 end }), 1, 0)",
        "table.concat(setmetatable({}, { __index = rawlen }), '', 1, 1 << 40)",
        "coroutine.wrap(function() table.move({}, 1, 1 << 50, 1) end)()",
        "local t = {} for _ = 1, 64 do t = { t, t } end require('json').encode(t)",
        NULL,
    };
    char err[512];
    for (int i = 0; cases[i]; i++) {
        uint64_t t0 = util_now_ms();
        CHECK(run_chunk(cases[i], 200, err, sizeof err) == -1);
        uint64_t took = util_now_ms() - t0;
        if (!(strstr(err, "time budget") || strstr(err, "not enough memory")) || took > 1500)
            fprintf(stderr, "  case %d (%s): %llu ms: %s\n", i, cases[i], (unsigned long long)took, err);
        CHECK(strstr(err, "time budget") != NULL || strstr(err, "not enough memory") != NULL);
        CHECK(took < 1500);
    }
    /* Patterns still work. */
    CHECK(run_chunk("assert(('a.b-c'):gsub('%W', '_') == 'a_b_c')\n"
                    "assert(select(2, ('x=1, y=2'):gsub('(%w+)=(%w+)', '%2=%1')) == 2)\n"
                    "assert(('hello world'):match('^(%w+)') == 'hello')\n"
                    "assert(('hello'):find('l', 1, true) == 3)\n"
                    "local n = 0 for k, v in ('a=1,b=2'):gmatch('(%w)=(%w)') do n = n + 1 end assert(n == 2)\n"
                    "assert(('THE (quick) fox'):find('%((%a+)%)') == 5)\n"
                    "assert(('  x'):match('^%s*()') == 3)\n"
                    "assert(string.rep('ab', 3, ',') == 'ab,ab,ab')\n"
                    "assert(table.concat({1, 2, 3}, '-') == '1-2-3')\n"
                    "local t = {1, 2, 3} table.insert(t, 2, 9) assert(table.concat(t) == '1923')\n"
                    "assert(table.remove(t, 1) == 1 and table.concat(t) == '923')\n"
                    "assert(table.concat(table.move({1, 2, 3}, 1, 3, 2)) == '1123')\n",
                    200, err, sizeof err) == 0);
}

/* Issue 16: rules cannot install finalizers (they run with hooks off). */
static void test_no_finalizers(void)
{
    char err[512];
    CHECK(run_chunk("setmetatable({}, { __gc = function() while true do end end })", 200, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "chunk.lua:1: setmetatable: a metatable with __gc is not allowed");
    CHECK(run_chunk("setmetatable({}, { __close = print })", 200, err, sizeof err) == -1);
    CHECK(run_chunk("setmetatable({}, { __mode = 'k' })", 200, err, sizeof err) == -1);
    CHECK(run_chunk("rawset(require('json').array_mt, '__gc', print) require('json').array({})", 200, err,
                    sizeof err) == -1);
    CHECK_CONTAINS(err, "json.array_mt was given __gc");
    CHECK(run_chunk("assert(getmetatable(setmetatable({}, { __index = {} })))", 200, err, sizeof err) == 0);
}

/* Issue 16: what a rule returns is checked inside the protected call; the
 * caller reads it raw afterwards and nothing the rules set can run then. */
static void test_call_rule_refuses_metatables(void)
{
    luahost *h = luahost_new(0);
    lua_State *L = luahost_state(h);
    char err[512];
    static const char *const bad[] = {
        "return function() return setmetatable({}, { __index = function() error('boom') end }) end",
        "return function() return { a = { b = setmetatable({}, { __newindex = function() end }) } } end",
        "return function() local t = {} for _ = 1, 200 do t = { t } end return t end",
        NULL,
    };
    for (int i = 0; bad[i]; i++) {
        CHECK(luaL_loadbufferx(L, bad[i], strlen(bad[i]), "@rule.lua", "t") == LUA_OK);
        CHECK(luahost_pcall(L, 0, 1, 200, err, sizeof err) == 0);
        CHECK(luahost_call_rule(L, "plan", 0, 200, err, sizeof err) == -1);
        CHECK_CONTAINS(err, "rule.lua:1: plan() returned");
        CHECK(lua_gettop(L) == 0);
    }
    static const char *const good = "return function() return { { x = require('json').array({}) }, 'y' } end";
    CHECK(luaL_loadbufferx(L, good, strlen(good), "@rule.lua", "t") == LUA_OK);
    CHECK(luahost_pcall(L, 0, 1, 200, err, sizeof err) == 0);
    CHECK(luahost_call_rule(L, "plan", 0, 200, err, sizeof err) == 0);
    CHECK(lua_rawlen(L, -1) == 2);
    lua_pop(L, 1);
    luahost_free(h);
}

/* The rollout stores rules as a bundle and plans with them again later
 * (rollout.c): unpacked, they are the same files, the same version. */
static void test_bundle_round_trip(void)
{
    config cfg;
    char err[256];
    CHECK(config_load(&cfg, 0, NULL, NULL, NULL, err, sizeof err) == 0);
    char *dir = copy_shipped_rules(cfg.rules_dir, "bundled", NULL);
    write_file(dir, "notes.txt", "not a rule file: not bundled\n");
    buf b = {0};
    char v1[65], v2[65];
    CHECK(luahost_dir_bundle(dir, &b, err, sizeof err) == 0);
    CHECK(luahost_dir_version(dir, v1, err, sizeof err) == 0);
    char hex[65];
    util_sha256_hex(b.data, b.len, hex);
    CHECK_STR(hex, v1);
    CHECK(strstr(b.data, "notes.txt") == NULL);
    char *copy = luahost_bundle_unpack(&b, tmproot);
    CHECK(copy != NULL);
    CHECK(luahost_dir_version(copy, v2, err, sizeof err) == 0);
    CHECK_STR(v2, v1);
    luahost_bundle_remove(copy, &b);
    struct stat st;
    CHECK(stat(copy, &st) != 0); /* gone with its files */
    /* a name with a slash ends the bundle: nothing is written outside */
    buf evil = {0};
    buf_append(&evil, "../escape.lua\0x\0", 17);
    char *e = luahost_bundle_unpack(&evil, tmproot);
    CHECK(e != NULL);
    char *outside = xasprintf("%s/escape.lua", tmproot);
    CHECK(stat(outside, &st) != 0);
    luahost_bundle_remove(e, &evil);
    free(outside);
    free(e);
    buf_free(&evil);
    free(copy);
    buf_free(&b);
    free(dir);
    config_free(&cfg);
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
    RUN(test_budget_holds_inside_c_functions);
    RUN(test_no_finalizers);
    RUN(test_call_rule_refuses_metatables);
    RUN(test_bundle_round_trip);
    char *cmd = xasprintf("rm -rf %s", tmproot);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup failed\n");
    free(cmd);
    return check_summary();
}
