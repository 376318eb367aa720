/* bind_db: the Lua `db` module over pg.h (documented in lua/core/db.lua).
 *
 * Error channels, as in Lua's own libraries: operational failures (cannot
 * connect, SQL error, connection lost) return nil, message[, sqlstate];
 * misuse (wrong argument types, a closed handle) raises.
 *
 * Functions marked "may longjmp" can leave through lua_error, luaL_check* or
 * a memory error. They keep nothing malloc'd across such a point: parameter
 * strings live on the Lua stack, and a PGresult is boxed in a userdata
 * whose __gc clears it until the rows have been copied into Lua. */
#include <lauxlib.h>
#include <lua.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"
#include "util.h"

#define DB_CONN_MT "db.conn"
#define DB_RESULT_MT "db.result"
#define DB_NULL_KEY "db.null"
#define DB_DEFAULT_STATEMENT_TIMEOUT_MS 10000

/* Type OIDs from PostgreSQL's pg_type.dat (stable across versions). */
#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_OID 26
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_NUMERIC 1700

typedef struct db_conn {
    pg_conn *conn; /* NULL when closed */
} db_conn;

/* Anchors libpq memory while Lua values are built from it: __gc frees what
 * a longjmp left behind; the normal path frees it and sets NULL. */
typedef struct db_result {
    PGresult *res;
    PGnotify *notify;
} db_result;

/* may longjmp */
static db_conn *check_open(lua_State *L)
{
    db_conn *d = luaL_checkudata(L, 1, DB_CONN_MT);
    if (d->conn == NULL)
        luaL_error(L, "attempt to use a closed db connection");
    return d;
}

/* Pushes the operational-failure pair nil, msg. may longjmp */
static int push_fail(lua_State *L, const char *msg)
{
    luaL_pushfail(L);
    lua_pushstring(L, msg);
    return 2;
}

/* may longjmp */
static void push_null(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, DB_NULL_KEY);
}

/* may longjmp */
static int is_null(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TUSERDATA)
        return 0;
    push_null(L);
    int eq = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return eq;
}

/* Converts the arguments first..top to text parameters. The strings are
 * pushed onto the stack (anchored) and their pointers stored in a userdata
 * array, returned through *out. may longjmp */
static int collect_params(lua_State *L, int first, const char ***out)
{
    int top = lua_gettop(L);
    int n = top >= first ? top - first + 1 : 0;
    const char **params = lua_newuserdatauv(L, sizeof *params * (size_t)(n ? n : 1), 0);
    luaL_checkstack(L, n, "too many query parameters");
    for (int i = 0; i < n; i++) {
        int idx = first + i;
        size_t len;
        switch (lua_type(L, idx)) {
        case LUA_TNIL:
            params[i] = NULL;
            break;
        case LUA_TBOOLEAN:
            params[i] = lua_toboolean(L, idx) ? "t" : "f";
            break;
        case LUA_TNUMBER:
            if (lua_isinteger(L, idx)) {
                params[i] = lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
            } else {
                lua_Number x = lua_tonumber(L, idx);
                if (x != x)
                    params[i] = lua_pushliteral(L, "NaN");
                else if (x > 0 && x * 0.5 == x)
                    params[i] = lua_pushliteral(L, "Infinity");
                else if (x < 0 && x * 0.5 == x)
                    params[i] = lua_pushliteral(L, "-Infinity");
                else {
                    char num[64]; /* %.17g: the exact double, not Lua's %.14g */
                    snprintf(num, sizeof num, "%.17g", (double)x);
                    params[i] = lua_pushstring(L, num);
                }
            }
            break;
        case LUA_TSTRING:
            params[i] = lua_tolstring(L, idx, &len);
            if (strlen(params[i]) != len)
                luaL_error(L, "query parameter %d contains a NUL byte", i + 1);
            break;
        default:
            if (is_null(L, idx)) {
                params[i] = NULL;
                break;
            }
            luaL_error(L, "query parameter %d: unsupported type %s (want nil, db.null, boolean, "
                          "number or string)", i + 1, luaL_typename(L, idx));
        }
    }
    *out = params;
    return n;
}

/* Runs sql with the arguments from index 3 on. Returns 1 and leaves the
 * boxed result on the stack top, or pushes nil, message, sqlstate and
 * returns 0. may longjmp */
static int run_query(lua_State *L, db_conn *d, db_result **boxp)
{
    const char *sql = luaL_checkstring(L, 2);
    const char **params;
    int n = collect_params(L, 3, &params);
    db_result *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->res = NULL;
    box->notify = NULL;
    luaL_setmetatable(L, DB_RESULT_MT);
    char err[512];
    /* No Lua call between here and the assignment: nothing can longjmp. */
    box->res = pg_exec(d->conn, sql, n, params, err, sizeof err);
    if (box->res == NULL) {
        const char *state = NULL;
        const char *open = strstr(err, "(SQLSTATE ");
        lua_pushnil(L);
        lua_pushstring(L, err);
        if (open != NULL) {
            state = open + strlen("(SQLSTATE ");
            lua_pushlstring(L, state, strcspn(state, ")"));
        } else {
            lua_pushnil(L);
        }
        return 0;
    }
    *boxp = box;
    return 1;
}

/* may longjmp (the result is boxed, so that is safe) */
static void push_value(lua_State *L, const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col)) {
        push_null(L);
        return;
    }
    const char *v = PQgetvalue(res, row, col);
    switch (PQftype(res, col)) {
    case OID_BOOL:
        lua_pushboolean(L, v[0] == 't');
        return;
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_OID:
        lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
        return;
    case OID_FLOAT4:
    case OID_FLOAT8:
    case OID_NUMERIC:
        /* strtod reads PostgreSQL's "NaN", "Infinity" and "-Infinity". */
        lua_pushnumber(L, (lua_Number)strtod(v, NULL));
        return;
    default:
        lua_pushlstring(L, v, (size_t)PQgetlength(res, row, col));
    }
}

/* conn:query(sql, ...) -> rows, columns | nil, err, sqlstate. may longjmp */
static int db_query(lua_State *L)
{
    db_conn *d = check_open(L);
    db_result *box;
    if (!run_query(L, d, &box))
        return 3;
    const PGresult *res = box->res;
    int nrows = PQntuples(res), ncols = PQnfields(res);
    lua_createtable(L, nrows, 0);
    int rows = lua_gettop(L);
    lua_createtable(L, ncols, 0);
    int cols = lua_gettop(L);
    for (int c = 0; c < ncols; c++) {
        lua_pushstring(L, PQfname(res, c));
        lua_rawseti(L, cols, c + 1);
    }
    for (int r = 0; r < nrows; r++) {
        lua_createtable(L, 0, ncols);
        for (int c = 0; c < ncols; c++) {
            lua_rawgeti(L, cols, c + 1);
            push_value(L, res, r, c);
            lua_rawset(L, -3);
        }
        lua_rawseti(L, rows, r + 1);
    }
    PQclear(box->res);
    box->res = NULL;
    return 2;
}

/* conn:exec(sql, ...) -> affected rows | nil, err, sqlstate. may longjmp */
static int db_exec(lua_State *L)
{
    db_conn *d = check_open(L);
    db_result *box;
    if (!run_query(L, d, &box))
        return 3;
    const char *tuples = PQcmdTuples(box->res);
    lua_Integer count = *tuples ? (lua_Integer)strtoll(tuples, NULL, 10) : 0;
    PQclear(box->res);
    box->res = NULL;
    lua_pushinteger(L, count);
    return 1;
}

/* conn:listen(channel) -> true | nil, err. may longjmp */
static int db_listen(lua_State *L)
{
    db_conn *d = check_open(L);
    const char *channel = luaL_checkstring(L, 2);
    char err[512];
    if (pg_listen(d->conn, channel, err, sizeof err) != 0) {
        return push_fail(L, err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Reads what has arrived and appends one {channel=, payload=} per
 * notification to the table on the stack top. Returns the count, or -1 when
 * the connection is gone. Uses libpq directly, not pg_consume_notifies(),
 * so each PGnotify sits in a box while Lua strings are made from it.
 * may longjmp */
static int drain_notifies(lua_State *L, db_conn *d)
{
    PGconn *raw = pg_raw(d->conn);
    if (!PQconsumeInput(raw) || PQstatus(raw) != CONNECTION_OK)
        return -1;
    int list = lua_gettop(L);
    db_result *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->res = NULL;
    box->notify = NULL;
    luaL_setmetatable(L, DB_RESULT_MT);
    int n = 0;
    while ((box->notify = PQnotifies(raw)) != NULL) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, box->notify->relname);
        lua_setfield(L, -2, "channel");
        lua_pushstring(L, box->notify->extra ? box->notify->extra : "");
        lua_setfield(L, -2, "payload");
        lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
        n++;
        PQfreemem(box->notify);
        box->notify = NULL;
    }
    lua_pop(L, 1);
    return n;
}

/* conn:notifications([timeout_ms]) -> array | nil, err. Waits up to
 * timeout_ms (default 0: only what has arrived). may longjmp */
static int db_notifications(lua_State *L)
{
    db_conn *d = check_open(L);
    lua_Integer timeout = luaL_optinteger(L, 2, 0);
    luaL_argcheck(L, timeout >= 0 && timeout <= 3600000, 2, "want 0..3600000 ms");
    lua_newtable(L);
    /* First take what libpq already buffered; wait only if that was nothing. */
    int n = drain_notifies(L, d);
    if (n == 0 && timeout > 0) {
        struct pollfd p = {.fd = pg_socket(d->conn), .events = POLLIN};
        if (poll(&p, 1, (int)timeout) > 0)
            n = drain_notifies(L, d);
    }
    if (n < 0) {
        return push_fail(L, "database connection lost");
    }
    return 1;
}

/* conn:close(); also __gc and __close. Idempotent. */
static int db_close(lua_State *L)
{
    db_conn *d = luaL_checkudata(L, 1, DB_CONN_MT);
    pg_close(d->conn);
    d->conn = NULL;
    return 0;
}

static int db_tostring(lua_State *L)
{
    db_conn *d = luaL_checkudata(L, 1, DB_CONN_MT);
    lua_pushstring(L, d->conn ? "db.conn (open)" : "db.conn (closed)");
    return 1;
}

/* db.connect(url [, {statement_timeout_ms=}]) -> conn | nil, err. may longjmp */
static int db_connect(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    lua_Integer timeout = DB_DEFAULT_STATEMENT_TIMEOUT_MS;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "statement_timeout_ms");
        timeout = luaL_optinteger(L, -1, timeout);
        luaL_argcheck(L, timeout >= 0 && timeout <= 86400000, 2, "bad statement_timeout_ms");
        lua_pop(L, 1);
    }
    /* The handle exists, closed, before the connection does: if anything
     * after pg_connect raised, __gc would still close it. */
    db_conn *d = lua_newuserdatauv(L, sizeof *d, 0);
    d->conn = NULL;
    luaL_setmetatable(L, DB_CONN_MT);
    char err[512];
    d->conn = pg_connect(url, (int)timeout, err, sizeof err);
    if (d->conn == NULL) {
        return push_fail(L, err);
    }
    return 1;
}

static int result_gc(lua_State *L)
{
    db_result *box = luaL_checkudata(L, 1, DB_RESULT_MT);
    PQclear(box->res);
    box->res = NULL;
    PQfreemem(box->notify);
    box->notify = NULL;
    return 0;
}

static int null_tostring(lua_State *L)
{
    lua_pushliteral(L, "db.null");
    return 1;
}

static const luaL_Reg conn_methods[] = {
    {"query", db_query},
    {"exec", db_exec},
    {"listen", db_listen},
    {"notifications", db_notifications},
    {"close", db_close},
    {NULL, NULL},
};

static const luaL_Reg conn_meta[] = {
    {"__gc", db_close},
    {"__close", db_close},
    {"__tostring", db_tostring},
    {"__index", NULL}, /* set to the methods table below */
    {NULL, NULL},
};

static const luaL_Reg db_funcs[] = {
    {"connect", db_connect},
    {"null", NULL}, /* placeholder, set below */
    {NULL, NULL},
};

/* may longjmp (memory errors only; called by require) */
int luaopen_db(lua_State *L)
{
    if (luaL_newmetatable(L, DB_CONN_MT)) {
        luaL_setfuncs(L, conn_meta, 0);
        luaL_newlib(L, conn_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, DB_RESULT_MT)) {
        lua_pushcfunction(L, result_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);

    /* db.null: one empty userdata per state, equal only to itself. */
    lua_getfield(L, LUA_REGISTRYINDEX, DB_NULL_KEY);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newuserdatauv(L, 0, 0);
        lua_createtable(L, 0, 2);
        lua_pushcfunction(L, null_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, "db.null");
        lua_setfield(L, -2, "__name");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, DB_NULL_KEY);
    }
    luaL_newlib(L, db_funcs);
    lua_insert(L, -2);
    lua_setfield(L, -2, "null");
    return 1;
}
