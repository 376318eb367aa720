/* The scrubber (scrub.h): every registered secret is replaced in what leaves
 * the process, whatever its neighbours; short values are ignored; the log
 * applies it to every line (Lua print/log included). */
#include <fcntl.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "log.h"
#include "luahost.h"
#include "scrub.h"
#include "util.h"

static void test_registered_secrets_are_replaced(void)
{
    scrub_reset();
    const char *cookie = "sess=\"Zq9\\x\"; tok=abcdef123456";
    scrub_add(cookie, strlen(cookie), SCRUB_MIN_LEN);
    scrub_add("v1", 2, SCRUB_MIN_LEN); /* too short: ignored */
    CHECK(scrub_count() == 1);
    char *text = xasprintf("error: bad cookie %s (again: %s) v1", cookie, cookie);
    CHECK(scrub_needed(text));
    char *clean = scrub_dup(text);
    CHECK_STR(clean, "error: bad cookie [REDACTED] (again: [REDACTED]) v1");
    CHECK(!scrub_needed(clean));
    free(clean);
    free(text);
    clean = scrub_dup("nothing secret here");
    CHECK_STR(clean, "nothing secret here");
    free(clean);
    /* a set of its own, the scanner reconcile uses */
    scrub_set *ss = scrub_set_new();
    CHECK(scrub_set_add(ss, "abcdefgh", 8, 8) == 1 && scrub_set_add(ss, "abcdefgh", 8, 8) == 0);
    size_t pos, len;
    CHECK(scrub_set_find(ss, "xxabcdefghyy", 12, &pos, &len) == 1 && pos == 2 && len == 8);
    CHECK(scrub_set_find(ss, "abcdefg", 7, &pos, &len) == 0);
    scrub_set_free(ss);
    scrub_reset();
}

static void test_log_lines_and_lua_print_are_scrubbed(void)
{
    scrub_reset();
    char path[] = "/tmp/sao-scrub-log-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    log_set_fd(fd);
    const char *secret = "cookie-310316675-Q9vTz";
    scrub_add(secret, strlen(secret), SCRUB_MIN_LEN);
    log_info("a message with cookie-310316675-Q9vTz", "field", "x cookie-310316675-Q9vTz y", NULL);
    luahost *h = luahost_new(0);
    lua_State *L = luahost_state(h);
    const char *code = "print('printed cookie-310316675-Q9vTz') require('log').warn('logged', { v = 'cookie-310316675-Q9vTz' })";
    char err[256];
    CHECK(luaL_loadbufferx(L, code, strlen(code), "@t.lua", "t") == LUA_OK);
    CHECK(luahost_pcall(L, 0, 0, 200, err, sizeof err) == 0);
    luahost_free(h);
    log_set_fd(2);
    size_t n;
    char *all = util_read_file(path, &n);
    CHECK(all != NULL && strstr(all, secret) == NULL);
    CHECK(all != NULL && strstr(all, "printed [REDACTED]") != NULL);
    CHECK(all != NULL && strstr(all, "x [REDACTED] y") != NULL);
    free(all);
    close(fd);
    unlink(path);
    scrub_reset();
}

int main(void)
{
    RUN(test_registered_secrets_are_replaced);
    RUN(test_log_lines_and_lua_print_are_scrubbed);
    return check_summary();
}
