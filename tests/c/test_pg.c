/* The database layer against a real PostgreSQL: pg.h (connect errors without
 * passwords, parameters never spliced, LISTEN/NOTIFY, advisory locks,
 * reconnect) and the Lua `db` binding (typed values, db.null, params,
 * notifications, the two error channels). Each test gets a fresh database,
 * created from DATABASE_URL's server (or TEST_DATABASE_URL's) and dropped. */
#include <lauxlib.h>
#include <lualib.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <signal.h>

#include "check.h"
#define PGTEST_PREFIX "pg"
#include "pgtest.h"
#include "pg.h"
#include "util.h"


/* Two connections to the test database, or both NULL. */
static int connect_two(pg_conn **a, pg_conn **b)
{
    char err[512];
    *a = pg_connect(test_url, 0, err, sizeof err);
    *b = pg_connect(test_url, 0, err, sizeof err);
    if (*a && *b)
        return 0;
    fprintf(stderr, "  connect: %s\n", err);
    pg_close(*a);
    pg_close(*b);
    *a = *b = NULL;
    return -1;
}

/* ---- pg.h ---------------------------------------------------------------- */

static void test_connect_errors_are_clear_and_hide_the_password(void)
{
    char err[512];
    CHECK(pg_connect(NULL, 0, err, sizeof err) == NULL);
    CHECK_STR(err, "DATABASE_URL is not set");

    CHECK(pg_connect("just-some-words", 0, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "neither a postgresql:// URI nor a key=value conninfo");

    /* Nothing listens on port 1: refused at once. */
    CHECK(pg_connect("postgresql://op:Sup3rSecretPw@127.0.0.1:1/db", 0, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "cannot connect to the database");
    CHECK_CONTAINS(err, "127.0.0.1");
    CHECK(strstr(err, "Sup3rSecretPw") == NULL);
    CHECK(strchr(err, '\n') == NULL);

    CHECK(pg_connect("host=127.0.0.1 port=1 user=op password=Sup3rSecretPw", 0, err,
                     sizeof err) == NULL);
    CHECK_CONTAINS(err, "cannot connect");
    CHECK(strstr(err, "Sup3rSecretPw") == NULL);

    /* libpq quotes the whole URI in some parse errors: the password must go. */
    CHECK(pg_connect("postgresql://op:Sup3rSecretPw@[::1/db", 0, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "invalid DATABASE_URL");
    CHECK(strstr(err, "Sup3rSecretPw") == NULL);
    CHECK(pg_connect("postgresql://op:Sup3rSecretPw@host/db?bogus_option=1", 0, err,
                     sizeof err) == NULL);
    CHECK_CONTAINS(err, "invalid DATABASE_URL");
    CHECK(strstr(err, "Sup3rSecretPw") == NULL);

    /* A server-side refusal (no such database) is reported as the server says. */
    char *wrong = pg_url_with(server_url, "dbname", "no_such_database_sao", err, sizeof err);
    CHECK(wrong != NULL);
    CHECK(pg_connect(wrong, 0, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "no_such_database_sao");
    free(wrong);
}

/* Issue 16: a server that accepted the connection and then stopped answering
 * (here: its backend process is stopped; the kernel still acknowledges what
 * libpq sends) holds a call at most statement_timeout + PG_CALL_MARGIN_MS;
 * the connection is then closed, and pg_reconnect brings a new one. */
static void test_silent_server_is_bounded(void)
{
    WITH_DB({
        char err[512];
        pg_conn *c = pg_connect(test_url, 200, err, sizeof err);
        CHECK(c != NULL);
        if (c == NULL)
            break;
        PGresult *res = pg_exec(c, "SELECT pg_backend_pid()", 0, NULL, err, sizeof err);
        CHECK(res != NULL);
        pid_t backend = res ? (pid_t)atoi(PQgetvalue(res, 0, 0)) : 0;
        PQclear(res);
        CHECK(backend > 0 && kill(backend, SIGSTOP) == 0);
        uint64_t t0 = util_now_ms();
        res = pg_exec(c, "SELECT 1", 0, NULL, err, sizeof err);
        uint64_t took = util_now_ms() - t0;
        kill(backend, SIGCONT);
        CHECK(res == NULL);
        CHECK_CONTAINS(err, "did not answer within 5200 ms");
        CHECK(took >= 5000 && took < 8000);
        CHECK(!pg_ok(c));
        CHECK(pg_reconnect(c, err, sizeof err) == 0);
        res = pg_exec(c, "SELECT 1", 0, NULL, err, sizeof err);
        CHECK(res != NULL);
        PQclear(res);
        pg_close(c);
    });
}

static void test_identifiers(void)
{
    CHECK(pg_ident_valid("accounts"));
    CHECK(pg_ident_valid("_x9"));
    CHECK(!pg_ident_valid("Accounts"));
    CHECK(!pg_ident_valid("9x"));
    CHECK(!pg_ident_valid("a-b"));
    CHECK(!pg_ident_valid("a\"; drop table x; --"));
    CHECK(!pg_ident_valid(""));
    CHECK(!pg_ident_valid(NULL));
    char long_name[80];
    memset(long_name, 'a', 64);
    long_name[64] = '\0';
    CHECK(!pg_ident_valid(long_name));
    char *q = pg_quote_ident("user");
    CHECK_STR(q, "\"user\"");
    free(q);
    CHECK(pg_quote_ident("Robert'); DROP") == NULL);
}

static void test_params_are_never_spliced(void)
{
    WITH_DB({
        char err[512];
        pg_conn *c = pg_connect(test_url, 5000, err, sizeof err);
        CHECK(c != NULL);
        if (c == NULL)
            break;
        CHECK(pg_command(c, "CREATE TABLE x (v text)", 0, NULL, err, sizeof err) == 0);
        const char *evil = "'); drop table x; --";
        const char *params[] = {evil, NULL};
        CHECK(pg_command(c, "INSERT INTO x VALUES ($1), ($2)", 2, params, err, sizeof err) == 0);
        PGresult *res =
            pg_exec(c, "SELECT v FROM x ORDER BY v NULLS LAST", 0, NULL, err, sizeof err);
        CHECK(res != NULL);
        if (res) {
            CHECK(PQntuples(res) == 2);
            CHECK_STR(PQgetvalue(res, 0, 0), evil);
            CHECK(PQgetisnull(res, 1, 0));
            PQclear(res);
        }
        /* statement_timeout is set on the session. */
        res = pg_exec(c, "SHOW statement_timeout", 0, NULL, err, sizeof err);
        CHECK(res != NULL);
        if (res) {
            CHECK_STR(PQgetvalue(res, 0, 0), "5s");
            PQclear(res);
        }
        res = pg_exec(c, "SELECT application_name FROM pg_stat_activity WHERE pid = "
                         "pg_backend_pid()", 0, NULL, err, sizeof err);
        CHECK(res != NULL);
        if (res) {
            CHECK_STR(PQgetvalue(res, 0, 0), PG_APPLICATION_NAME);
            PQclear(res);
        }
        /* SQL errors: one line with the SQLSTATE. */
        CHECK(pg_exec(c, "SELECT * FROM no_such_table", 0, NULL, err, sizeof err) == NULL);
        CHECK_CONTAINS(err, "relation \"no_such_table\" does not exist");
        CHECK_CONTAINS(err, "(SQLSTATE 42P01)");
        CHECK(pg_exec_script(c, "CREATE TABLE y (a int); INSERT INTO y VALUES (1); SELECT 1",
                             err, sizeof err) == 0);
        pg_close(c);
    });
}

static void on_notify(const char *channel, const char *payload, void *ud)
{
    buf *b = ud;
    buf_printf(b, "%s=%s;", channel, payload);
}

/* Polls c's socket until something is delivered or timeout_ms passes. */
static int wait_notifies(pg_conn *c, buf *got, int timeout_ms)
{
    uint64_t end = util_now_ms() + (uint64_t)timeout_ms;
    int total = 0;
    while (util_now_ms() < end && total == 0) {
        struct pollfd p = {.fd = pg_socket(c), .events = POLLIN};
        poll(&p, 1, 100);
        int n = pg_consume_notifies(c, on_notify, got);
        if (n < 0)
            return -1;
        total += n;
    }
    return total;
}

static void test_listen_notify_and_reconnect(void)
{
    WITH_DB({
        char err[512];
        pg_conn *l, *s;
        CHECK(connect_two(&l, &s) == 0);
        if (l == NULL)
            break;
        CHECK(pg_listen(l, "sync_airbnb_accounts", err, sizeof err) == 0);
        CHECK(pg_listen(l, "Bad-Channel", err, sizeof err) == -1);
        CHECK(pg_socket(l) >= 0);
        buf got = {0};
        CHECK(pg_consume_notifies(l, on_notify, &got) == 0);
        const char *params[] = {"310316675"};
        CHECK(pg_command(s, "SELECT pg_notify('sync_airbnb_accounts', $1)", 1, params, err,
                         sizeof err) == 0);
        CHECK(wait_notifies(l, &got, 3000) == 1);
        CHECK_STR(got.data, "sync_airbnb_accounts=310316675;");

        /* A notification that arrives while the listener runs a query is
         * queued by libpq: the socket stays quiet, consume still finds it. */
        buf_reset(&got);
        CHECK(pg_command(s, "SELECT pg_notify('sync_airbnb_accounts', $1)", 1, params, err,
                         sizeof err) == 0);
        CHECK(pg_command(l, "SELECT pg_sleep(0.2)", 0, NULL, err, sizeof err) == 0);
        struct pollfd quiet = {.fd = pg_socket(l), .events = POLLIN};
        CHECK(poll(&quiet, 1, 200) == 0);
        CHECK(pg_consume_notifies(l, on_notify, &got) == 1);
        CHECK_STR(got.data, "sync_airbnb_accounts=310316675;");

        /* Kill the listener's backend: consume reports the loss, reconnect
         * restores the session and its LISTEN. */
        char pid[16];
        snprintf(pid, sizeof pid, "%d", PQbackendPID(pg_raw(l)));
        const char *kp[] = {pid};
        CHECK(pg_command(s, "SELECT pg_terminate_backend($1::int)", 1, kp, err, sizeof err) == 0);
        int n = 0;
        for (int i = 0; i < 50 && n >= 0; i++) {
            usleep(50000);
            n = pg_consume_notifies(l, on_notify, &got);
        }
        CHECK(n == -1);
        CHECK(!pg_ok(l));
        CHECK(pg_reconnect(l, err, sizeof err) == 0);
        CHECK(pg_ok(l));
        buf_reset(&got);
        CHECK(pg_command(s, "SELECT pg_notify('sync_airbnb_accounts', $1)", 1, params, err,
                         sizeof err) == 0);
        CHECK(wait_notifies(l, &got, 3000) == 1);
        CHECK_STR(got.data, "sync_airbnb_accounts=310316675;");
        buf_free(&got);
        pg_close(l);
        pg_close(s);
    });
}

static void test_advisory_lock(void)
{
    WITH_DB({
        char err[512];
        pg_conn *a, *b;
        CHECK(connect_two(&a, &b) == 0);
        if (a == NULL)
            break;
        CHECK(pg_advisory_lock(a, 42, 0, err, sizeof err) == PG_LOCK_ACQUIRED);
        uint64_t t0 = util_now_ms();
        CHECK(pg_advisory_lock(b, 42, 500, err, sizeof err) == PG_LOCK_BUSY);
        CHECK(util_now_ms() - t0 >= 450);
        CHECK_CONTAINS(err, "held by another session");
        CHECK(pg_advisory_unlock(a, 42, err, sizeof err) == 0);
        CHECK(pg_advisory_lock(b, 42, 500, err, sizeof err) == PG_LOCK_ACQUIRED);
        pg_close(b); /* closing releases it */
        CHECK(pg_advisory_lock(a, 42, 2000, err, sizeof err) == PG_LOCK_ACQUIRED);
        pg_close(a);
    });
}

/* ---- the Lua db binding --------------------------------------------------- */

/* Runs code in a plain state with `db` and `URL` as globals (the test only;
 * the operator's states are sandboxed). Returns NULL on success or the
 * error message (malloc'd). */
static char *run_lua(const char *code)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "db", luaopen_db, 1);
    lua_pop(L, 1);
    lua_pushstring(L, test_url);
    lua_setglobal(L, "URL");
    char *err = NULL;
    if (luaL_loadbufferx(L, code, strlen(code), "=test", "t") != LUA_OK ||
        lua_pcall(L, 0, 0, 0) != LUA_OK)
        err = xstrdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "(non-string error)");
    lua_close(L);
    return err;
}

#define CHECK_LUA(code)                                              \
    do {                                                             \
        char *lua_err_ = run_lua(code);                              \
        if (lua_err_) {                                              \
            fprintf(stderr, "  lua: %s\n", lua_err_);                \
            free(lua_err_);                                          \
        }                                                            \
        CHECK(lua_err_ == NULL);                                     \
    } while (0)

static void test_lua_typed_values_and_null(void)
{
    WITH_DB(CHECK_LUA(
        "local c = assert(db.connect(URL))\n"
        "local rows, cols = assert(c:query([[SELECT true AS b, false AS f, 7::int2 AS i2,\n"
        "  -8::int4 AS i4, 9007199254740993::int8 AS i8, 1.5::float4 AS r4, 0.1::float8 AS r8,\n"
        "  12.25::numeric AS num, 'NaN'::float8 AS nan, 'Infinity'::float8 AS inf,\n"
        "  'x y'::text AS t, 'v'::varchar AS vc,\n"
        "  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,\n"
        "  '2024-05-01 10:00:00+00'::timestamptz AS ts, NULL::text AS n, NULL::int AS ni]]))\n"
        "assert(#rows == 1)\n"
        "local r = rows[1]\n"
        "assert(r.b == true and r.f == false)\n"
        "assert(math.type(r.i2) == 'integer' and r.i2 == 7)\n"
        "assert(math.type(r.i4) == 'integer' and r.i4 == -8)\n"
        "assert(math.type(r.i8) == 'integer' and r.i8 == 9007199254740993)\n"
        "assert(math.type(r.r4) == 'float' and r.r4 == 1.5)\n"
        "assert(r.r8 == 0.1 and r.num == 12.25)\n"
        "assert(r.nan ~= r.nan and r.inf == math.huge)\n"
        "assert(r.t == 'x y' and r.vc == 'v')\n"
        "assert(r.u == 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')\n"
        "assert(type(r.ts) == 'string' and r.ts:match('^2024%-05%-01'))\n"
        "assert(r.n == db.null and r.ni == db.null and r.n ~= nil)\n"
        "assert(tostring(db.null) == 'db.null')\n"
        "assert(#cols == 16 and cols[1] == 'b' and cols[5] == 'i8' and cols[16] == 'ni')\n"
        "local empty, ecols = assert(c:query('SELECT 1 AS a WHERE false'))\n"
        "assert(#empty == 0 and ecols[1] == 'a')\n"
        "c:close()\n"));
}

static void test_lua_params_never_spliced(void)
{
    WITH_DB(CHECK_LUA(
        "local c <close> = assert(db.connect(URL))\n"
        "assert(c:exec('CREATE TABLE x (v text, n int8, f float8, b boolean)') == 0)\n"
        "local evil = \"'); drop table x; --\"\n"
        "assert(c:exec('INSERT INTO x VALUES ($1, $2, $3, $4)', evil, 42, 2.5, true) == 1)\n"
        "assert(c:exec('INSERT INTO x VALUES ($1, $2, $3, $4)', db.null, nil, nil, false) == 1)\n"
        "local rows = assert(c:query('SELECT * FROM x ORDER BY v NULLS LAST'))\n"
        "assert(#rows == 2)\n"
        "assert(rows[1].v == evil and rows[1].n == 42 and rows[1].f == 2.5 and rows[1].b == true)\n"
        "assert(rows[2].v == db.null and rows[2].n == db.null and rows[2].b == false)\n"
        "local r = assert(c:query('SELECT $1::text AS v, $2::float8 AS big', evil, 1e300))[1]\n"
        "assert(r.v == evil and r.big == 1e300)\n"
        "assert(c:query('SELECT $1::float8 AS x', 0/0)[1].x ~= 0/0)\n"
        "assert(c:query('SELECT $1::float8 AS x', -math.huge)[1].x == -math.huge)\n"
        "assert(c:exec('UPDATE x SET n = n + 1') == 2)\n"));
}

static void test_lua_error_channels(void)
{
    WITH_DB(CHECK_LUA(
        "local c = assert(db.connect(URL))\n"
        /* operational: nil, message, sqlstate */
        "local rows, err, state = c:query('SELECT * FROM nope')\n"
        "assert(rows == nil and err:find('does not exist') and state == '42P01', err)\n"
        "local n, err2 = c:exec('SELEC 1')\n"
        "assert(n == nil and err2:find('syntax error'))\n"
        "local bad, cerr = db.connect('postgresql://u:HidePw@127.0.0.1:1/x')\n"
        "assert(bad == nil and cerr:find('cannot connect') and not cerr:find('HidePw'))\n"
        /* misuse raises */
        "assert(not pcall(c.query, c, {}))\n"
        "local ok, e = pcall(c.query, c, 'SELECT $1', {})\n"
        "assert(not ok and e:find('unsupported type table'), e)\n"
        "ok, e = pcall(c.query, c, 'SELECT $1', 'a\\0b')\n"
        "assert(not ok and e:find('NUL'), e)\n"
        "assert(not pcall(db.connect, 42 == 42))\n"
        "c:close(); c:close()\n"
        "assert(tostring(c) == 'db.conn (closed)')\n"
        "ok, e = pcall(c.query, c, 'SELECT 1')\n"
        "assert(not ok and e:find('closed db connection'), e)\n"
        /* garbage collection closes an unreferenced connection */
        "do local g = assert(db.connect(URL)) end\n"
        "collectgarbage(); collectgarbage()\n"));
}

static void test_lua_listen_notifications(void)
{
    WITH_DB(CHECK_LUA(
        "local l <close> = assert(db.connect(URL))\n"
        "local s <close> = assert(db.connect(URL))\n"
        "assert(l:listen('sync_airbnb_accounts'))\n"
        "local none = assert(l:notifications(0))\n"
        "assert(#none == 0)\n"
        "assert(s:exec(\"SELECT pg_notify('sync_airbnb_accounts', $1)\", 'acct-1'))\n"
        "assert(s:exec(\"SELECT pg_notify('sync_airbnb_accounts', $1)\", 'acct-2'))\n"
        "local got = {}\n"
        "for _ = 1, 20 do\n"
        "  for _, n in ipairs(assert(l:notifications(200))) do got[#got + 1] = n end\n"
        "  if #got == 2 then break end\n"
        "end\n"
        "assert(#got == 2, 'got ' .. #got)\n"
        "assert(got[1].channel == 'sync_airbnb_accounts' and got[1].payload == 'acct-1')\n"
        "assert(got[2].payload == 'acct-2')\n"
        "local ok, e = pcall(l.listen, l)\n"
        "assert(not ok)\n"
        "local r, lerr = l:listen('Not Valid')\n"
        "assert(r == nil and lerr:find('invalid channel'))\n"));
}

int main(void)
{
    if (pgtest_init("test_pg") < 0)
        return 1;
    RUN(test_identifiers);
    RUN(test_silent_server_is_bounded);
    RUN(test_connect_errors_are_clear_and_hide_the_password);
    RUN(test_params_are_never_spliced);
    RUN(test_listen_notify_and_reconnect);
    RUN(test_advisory_lock);
    RUN(test_lua_typed_values_and_null);
    RUN(test_lua_params_never_spliced);
    RUN(test_lua_error_channels);
    RUN(test_lua_listen_notifications);
    return check_summary();
}
