/* migrate: see migrate.h. */
#include "migrate.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "luahost.h"
#include "util.h"

#define MIGRATE_SCHEMA "sync_airbnb_operator"
#define MIGRATE_MAX 10000

/* Bootstrap: the runner records every migration, including the one that
 * declares this table, so it must exist first. Same DDL as 001. */
static const char bootstrap_sql[] =
    "CREATE SCHEMA IF NOT EXISTS " MIGRATE_SCHEMA ";\n"
    "CREATE TABLE IF NOT EXISTS " MIGRATE_SCHEMA ".schema_migrations (\n"
    "    id         text PRIMARY KEY,\n"
    "    checksum   text NOT NULL,\n"
    "    applied_at timestamptz NOT NULL DEFAULT now()\n"
    ");\n";

/* What a migration needs of the accounts table (its field accounts_table):
 * nothing; that it exists ("required": it attaches a trigger); or that it
 * exists or may be created ("create": 003, only with
 * MIGRATE_CREATE_ACCOUNTS_TABLE). Not part of the checksum. */
enum table_need { NEED_NONE, NEED_TABLE, NEED_CREATE };

typedef struct migration {
    char *id;
    char *description;
    char *sql; /* rendered for the configured accounts table */
    char checksum[65];
    enum table_need need;
} migration;

typedef struct applied_row {
    char *id;
    char *checksum;
    char *applied_at; /* UTC, RFC 3339 */
} applied_row;

/* What the files say and what the database says, side by side. */
typedef struct plan {
    migration *files;
    int nfiles;
    applied_row *rows;
    int nrows;
    int table_exists;    /* schema_migrations exists */
    int accounts_exists; /* the accounts table exists */
    int may_create;      /* MIGRATE_CREATE_ACCOUNTS_TABLE */
    char *accounts_table; /* for messages (owned) */
} plan;

enum state { ST_APPLIED, ST_PENDING, ST_CHANGED };
enum head { HEAD_AT, HEAD_PENDING, HEAD_DIVERGED };

static void plan_free(plan *p)
{
    for (int i = 0; i < p->nfiles; i++) {
        free(p->files[i].id);
        free(p->files[i].description);
        free(p->files[i].sql);
    }
    free(p->files);
    for (int i = 0; i < p->nrows; i++) {
        free(p->rows[i].id);
        free(p->rows[i].checksum);
        free(p->rows[i].applied_at);
    }
    free(p->rows);
    free(p->accounts_table);
    memset(p, 0, sizeof *p);
}

/* ---- loading the Lua list ---------------------------------------------- */

/* 001_name: three digits, '_', then [a-z0-9_]+. */
static int id_valid(const char *id)
{
    if (strlen(id) < 5 || id[3] != '_')
        return 0;
    for (int i = 0; i < 3; i++)
        if (id[i] < '0' || id[i] > '9')
            return 0;
    for (const char *p = id + 4; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return 0;
    return 1;
}

/* Pushes a fresh ctx table (fresh per migration, so one that mutates it
 * cannot change another's SQL). may longjmp */
static void push_ctx(lua_State *L, const config *cfg)
{
    lua_createtable(L, 0, 5);
    lua_pushliteral(L, MIGRATE_SCHEMA);
    lua_setfield(L, -2, "schema");
    lua_pushstring(L, cfg->accounts_schema);
    lua_setfield(L, -2, "accounts_schema");
    lua_pushfstring(L, "\"%s\"", cfg->accounts_schema);
    lua_setfield(L, -2, "accounts_schema_quoted");
    lua_pushstring(L, cfg->accounts_relname);
    lua_setfield(L, -2, "accounts_table");
    lua_pushfstring(L, "\"%s\".\"%s\"", cfg->accounts_schema, cfg->accounts_relname);
    lua_setfield(L, -2, "accounts_qualified");
}

/* Runs under luahost_pcall: (list of ids, config lightuserdata) -> array of
 * plain {id, description, sql} triples, so the caller reads them back with
 * raw accesses that cannot raise. may longjmp */
static int collect_migrations(lua_State *L)
{
    const config *cfg = lua_touserdata(L, 2);
    if (!lua_istable(L, 1))
        return luaL_error(L, "init.lua must return the ordered list of migration ids");
    lua_Integer n = luaL_len(L, 1);
    if (n > MIGRATE_MAX)
        return luaL_error(L, "init.lua lists %I migrations (at most %d)", (LUAI_UACINT)n,
                          MIGRATE_MAX);
    /* The whole list first, so an ordering mistake is reported as one. */
    lua_settop(L, 2);
    lua_pushnil(L); /* 3: the previous id */
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_geti(L, 1, i) != LUA_TSTRING) /* 4 */
            return luaL_error(L, "init.lua: entry %I is not a migration id string", (LUAI_UACINT)i);
        const char *id = lua_tostring(L, 4), *prev = lua_tostring(L, 3);
        if (!id_valid(id))
            return luaL_error(L, "init.lua: bad migration id \"%s\" (want NNN_name, [a-z0-9_])",
                              id);
        if (prev != NULL && strcmp(prev, id) >= 0)
            return luaL_error(L, "init.lua: migration ids must be unique and in ascending order "
                                 "(\"%s\" after \"%s\")", id, prev);
        lua_replace(L, 3);
    }
    lua_settop(L, 2);

    lua_createtable(L, (int)n, 0); /* 3: the result */
    const int out = 3, id_at = 4, m = 5;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 1, i); /* id_at */
        const char *id = lua_tostring(L, id_at);
        lua_getglobal(L, "require");
        lua_pushvalue(L, id_at);
        lua_call(L, 1, 1); /* m */
        if (!lua_istable(L, m))
            return luaL_error(L, "%s.lua must return a table {id=, description=, up=}", id);
        if (lua_getfield(L, m, "id") != LUA_TSTRING || strcmp(lua_tostring(L, -1), id) != 0)
            return luaL_error(L, "%s.lua: field id must be \"%s\"", id, id);
        lua_pop(L, 1);
        if (lua_getfield(L, m, "description") != LUA_TSTRING) /* 6 */
            return luaL_error(L, "%s.lua: field description must be a string", id);
        if (lua_getfield(L, m, "up") != LUA_TFUNCTION)
            return luaL_error(L, "%s.lua: field up must be a function(ctx) returning SQL", id);
        push_ctx(L, cfg);
        lua_call(L, 1, 1); /* 7: the SQL */
        size_t len = 0;
        if (lua_type(L, 7) != LUA_TSTRING || (lua_tolstring(L, 7, &len), len == 0) ||
            strlen(lua_tostring(L, 7)) != len)
            return luaL_error(L, "%s.lua: up(ctx) must return non-empty SQL text", id);
        int need = lua_getfield(L, m, "accounts_table"); /* 8 */
        if (need == LUA_TNIL) {
            lua_pop(L, 1);
            lua_pushliteral(L, "");
        } else if (need != LUA_TSTRING || (strcmp(lua_tostring(L, 8), "required") != 0 &&
                                           strcmp(lua_tostring(L, 8), "create") != 0)) {
            return luaL_error(L, "%s.lua: field accounts_table must be nil, \"required\" or "
                                 "\"create\"", id);
        }

        lua_createtable(L, 4, 0);
        lua_pushvalue(L, id_at);
        lua_rawseti(L, -2, 1);
        lua_pushvalue(L, 6);
        lua_rawseti(L, -2, 2);
        lua_pushvalue(L, 7);
        lua_rawseti(L, -2, 3);
        lua_pushvalue(L, 8);
        lua_rawseti(L, -2, 4);
        lua_rawseti(L, out, i);
        lua_settop(L, out);
    }
    lua_settop(L, out);
    return 1;
}

/* Copies element k (a string) of the raw table on the stack top. */
static char *raw_string(lua_State *L, int k)
{
    lua_rawgeti(L, -1, k);
    char *s = xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    return s;
}

static int load_migrations(const config *cfg, plan *p, char *err, size_t errlen)
{
    char lerr[1024];
    int rc = -1;
    luahost *h = NULL;

    if (cfg->migrations_dir == NULL || *cfg->migrations_dir == '\0') {
        util_seterr(err, errlen, "MIGRATIONS_DIR is not set");
        return -1;
    }
    if (!pg_ident_valid(cfg->accounts_schema) || !pg_ident_valid(cfg->accounts_relname)) {
        util_seterr(err, errlen, "ACCOUNTS_TABLE must be schema.table with [a-z_][a-z0-9_]* names");
        return -1;
    }
    h = luahost_new(0);
    if (h == NULL) {
        util_seterr(err, errlen, "cannot create a Lua state");
        return -1;
    }
    int budget = cfg->rules_budget_ms > 0 ? cfg->rules_budget_ms : LUAHOST_DEFAULT_BUDGET_MS;
    if (luahost_load_dir(h, cfg->migrations_dir, "init", budget, lerr, sizeof lerr) != 0) {
        util_seterr(err, errlen, "cannot load migrations from %s: %s", cfg->migrations_dir, lerr);
        goto out;
    }
    lua_State *L = luahost_state(h);
    lua_pushcfunction(L, collect_migrations);
    luahost_push_entry(h);
    lua_pushlightuserdata(L, (void *)cfg);
    if (luahost_pcall(L, 2, 1, budget, lerr, sizeof lerr) != 0) {
        util_seterr(err, errlen, "cannot load migrations from %s: %s", cfg->migrations_dir, lerr);
        goto out;
    }
    int n = (int)lua_rawlen(L, -1);
    p->files = xcalloc((size_t)(n ? n : 1), sizeof *p->files);
    for (int i = 0; i < n; i++) {
        migration *m = &p->files[i];
        lua_rawgeti(L, -1, i + 1);
        m->id = raw_string(L, 1);
        m->description = raw_string(L, 2);
        m->sql = raw_string(L, 3);
        char *need = raw_string(L, 4);
        m->need = strcmp(need, "required") == 0 ? NEED_TABLE
                  : strcmp(need, "create") == 0 ? NEED_CREATE
                                                 : NEED_NONE;
        free(need);
        lua_pop(L, 1);
        util_sha256_hex(m->sql, strlen(m->sql), m->checksum);
        p->nfiles = i + 1;
    }
    lua_pop(L, 1);
    p->may_create = cfg->migrate_create_accounts_table;
    p->accounts_table = xasprintf("%s.%s", cfg->accounts_schema, cfg->accounts_relname);
    rc = 0;
out:
    luahost_free(h);
    return rc;
}

/* ---- the database side -------------------------------------------------- */

static int history_exists(pg_conn *c, int *exists, char *err, size_t errlen)
{
    PGresult *res =
        pg_exec(c, "SELECT to_regclass('" MIGRATE_SCHEMA ".schema_migrations') IS NOT NULL", 0,
                NULL, err, errlen);
    if (res == NULL)
        return -1;
    *exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

/* Whether the configured accounts table exists now. */
static int accounts_table_exists(pg_conn *c, const plan *p, int *exists, char *err, size_t errlen)
{
    char *quoted = NULL, *dot = strchr(p->accounts_table, '.');
    quoted = xasprintf("\"%.*s\".\"%s\"", (int)(dot - p->accounts_table), p->accounts_table, dot + 1);
    const char *params[] = {quoted};
    PGresult *res = pg_exec(c, "SELECT to_regclass($1) IS NOT NULL", 1, params, err, errlen);
    free(quoted);
    if (res == NULL)
        return -1;
    *exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

static int read_history(pg_conn *c, plan *p, char *err, size_t errlen)
{
    if (accounts_table_exists(c, p, &p->accounts_exists, err, errlen) != 0)
        return -1;
    if (history_exists(c, &p->table_exists, err, errlen) != 0)
        return -1;
    if (!p->table_exists)
        return 0;
    PGresult *res = pg_exec(c,
                            "SELECT id, checksum, to_char(applied_at AT TIME ZONE 'UTC', "
                            "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM " MIGRATE_SCHEMA
                            ".schema_migrations ORDER BY id",
                            0, NULL, err, errlen);
    if (res == NULL)
        return -1;
    int n = PQntuples(res);
    p->rows = xcalloc((size_t)(n ? n : 1), sizeof *p->rows);
    for (int i = 0; i < n; i++) {
        p->rows[i].id = xstrdup(PQgetvalue(res, i, 0));
        p->rows[i].checksum = xstrdup(PQgetvalue(res, i, 1));
        p->rows[i].applied_at = xstrdup(PQgetvalue(res, i, 2));
    }
    p->nrows = n;
    PQclear(res);
    return 0;
}

static const applied_row *find_row(const plan *p, const char *id)
{
    for (int i = 0; i < p->nrows; i++)
        if (strcmp(p->rows[i].id, id) == 0)
            return &p->rows[i];
    return NULL;
}

static int known(const plan *p, const char *id)
{
    for (int i = 0; i < p->nfiles; i++)
        if (strcmp(p->files[i].id, id) == 0)
            return 1;
    return 0;
}

static enum state state_of(const plan *p, const migration *m)
{
    const applied_row *r = find_row(p, m->id);
    if (r == NULL)
        return ST_PENDING;
    return strcmp(r->checksum, m->checksum) == 0 ? ST_APPLIED : ST_CHANGED;
}

/* Whether m cannot be applied yet: it needs the accounts table, which does
 * not exist (and may not be created). */
static int blocked(const plan *p, const migration *m)
{
    if (m->need == NEED_NONE || p->accounts_exists)
        return 0;
    return !(m->need == NEED_CREATE && p->may_create);
}

/* One line saying why m waits (a static buffer: used at once). */
static const char *waiting_message(const plan *p, const migration *m)
{
    static char msg[512];
    snprintf(msg, sizeof msg,
             MIGRATE_WAITING_FOR_ACCOUNTS " %s: sync-airbnb's migrations (alembic upgrade head) "
             "have not created it yet, and %s needs it (MIGRATE_CREATE_ACCOUNTS_TABLE=true creates "
             "it instead, for a demo or tests only)",
             p->accounts_table, m->id);
    return msg;
}

/* Where the database stands. For HEAD_PENDING and HEAD_DIVERGED, err says
 * why in one line (for DIVERGED, a message `up` refuses with). */
static enum head assess(const plan *p, int *npending, char *err, size_t errlen)
{
    int pending = 0;
    const migration *first_pending = NULL;
    for (int i = 0; i < p->nfiles; i++) {
        const migration *m = &p->files[i];
        enum state st = state_of(p, m);
        if (st == ST_CHANGED) {
            const applied_row *r = find_row(p, m->id);
            util_seterr(err, errlen,
                        "migration %s was changed after it was applied (checksum %.12s in the "
                        "database, %.12s now): restore the file and add a new migration "
                        "instead; a changed ACCOUNTS_TABLE also changes it",
                        m->id, r->checksum, m->checksum);
            return HEAD_DIVERGED;
        }
        if (st == ST_PENDING && pending++ == 0)
            first_pending = m;
    }
    for (int i = 0; i < p->nrows; i++) {
        if (!known(p, p->rows[i].id)) {
            util_seterr(err, errlen,
                        "the database has migration %s applied, which this binary does not "
                        "know: it was migrated by a newer operator version (or MIGRATIONS_DIR "
                        "is wrong)",
                        p->rows[i].id);
            return HEAD_DIVERGED;
        }
    }
    if (npending)
        *npending = pending;
    if (pending) {
        const migration *waiting = NULL;
        for (int i = 0; i < p->nfiles && waiting == NULL; i++)
            if (state_of(p, &p->files[i]) == ST_PENDING && blocked(p, &p->files[i]))
                waiting = &p->files[i];
        if (waiting)
            util_seterr(err, errlen, "%s; %d migration%s pending, first %s", waiting_message(p, waiting),
                        pending, pending == 1 ? "" : "s", first_pending->id);
        else
            util_seterr(err, errlen, "%d migration%s pending, first %s", pending,
                        pending == 1 ? "" : "s", first_pending->id);
        return HEAD_PENDING;
    }
    return HEAD_AT;
}

/* One migration and its history row in one transaction. */
static int apply_one(pg_conn *c, const migration *m, char *err, size_t errlen)
{
    char perr[1024];
    const char *params[] = {m->id, m->checksum};
    uint64_t t0 = util_now_ms();

    log_info("applying migration", "id", m->id, "description", m->description, NULL);
    if (pg_command(c, "BEGIN", 0, NULL, perr, sizeof perr) != 0)
        goto err;
    if (pg_exec_script(c, m->sql, perr, sizeof perr) != 0)
        goto err;
    if (PQtransactionStatus(pg_raw(c)) != PQTRANS_INTRANS) {
        util_seterr(perr, sizeof perr, "its SQL ended the transaction (COMMIT/ROLLBACK are not "
                                       "allowed in a migration)");
        goto err;
    }
    if (pg_command(c,
                   "INSERT INTO " MIGRATE_SCHEMA ".schema_migrations (id, checksum) "
                   "VALUES ($1, $2)",
                   2, params, perr, sizeof perr) != 0)
        goto err;
    if (pg_command(c, "COMMIT", 0, NULL, perr, sizeof perr) != 0)
        goto err;
    char ms[32];
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)(util_now_ms() - t0));
    log_info("applied migration", "id", m->id, "checksum", m->checksum, "duration_ms", ms, NULL);
    return 0;

err:
    if (PQtransactionStatus(pg_raw(c)) != PQTRANS_IDLE) {
        char ignored[256];
        pg_command(c, "ROLLBACK", 0, NULL, ignored, sizeof ignored);
    }
    util_seterr(err, errlen, "migration %s failed and was rolled back: %s", m->id, perr);
    return -1;
}

int migrate_up(pg_conn *c, const config *cfg, int *applied, char *err, size_t errlen)
{
    plan p = {0};
    int locked = 0, rc = -1, done = 0;
    char lerr[512];

    if (applied)
        *applied = 0;
    if (load_migrations(cfg, &p, err, errlen) != 0)
        goto out;

    int lock = pg_advisory_lock(c, MIGRATE_LOCK_KEY, 0, lerr, sizeof lerr);
    if (lock == PG_LOCK_BUSY) {
        char secs[16];
        snprintf(secs, sizeof secs, "%d", cfg->migrate_lock_timeout_s);
        log_info("another migrate up holds the migration lock; waiting", "timeout_s", secs, NULL);
        lock = pg_advisory_lock(c, MIGRATE_LOCK_KEY, cfg->migrate_lock_timeout_s * 1000, lerr,
                                sizeof lerr);
    }
    if (lock == PG_LOCK_BUSY) {
        util_seterr(err, errlen,
                    "another migration holds the lock (waited %d s, MIGRATE_LOCK_TIMEOUT_SECONDS); "
                    "is another `migrate up` Job still running?",
                    cfg->migrate_lock_timeout_s);
        goto out;
    }
    if (lock != PG_LOCK_ACQUIRED) {
        util_seterr(err, errlen, "cannot take the migration lock: %s", lerr);
        goto out;
    }
    locked = 1;

    /* Read the history only now: a runner that waited sees what the other applied. */
    if (read_history(c, &p, err, errlen) != 0)
        goto out;
    if (!p.table_exists) {
        if (pg_exec_script(c, bootstrap_sql, lerr, sizeof lerr) != 0) {
            util_seterr(err, errlen, "cannot create " MIGRATE_SCHEMA ".schema_migrations: %s",
                        lerr);
            goto out;
        }
    }
    if (assess(&p, NULL, err, errlen) == HEAD_DIVERGED)
        goto out;
    for (int i = 0; i < p.nfiles; i++) {
        if (state_of(&p, &p.files[i]) != ST_PENDING)
            continue;
        /* In order: nothing after a migration that has to wait is applied. */
        if (blocked(&p, &p.files[i])) {
            util_seterr(err, errlen, "%s", waiting_message(&p, &p.files[i]));
            rc = 1;
            goto out;
        }
        if (apply_one(c, &p.files[i], err, errlen) != 0)
            goto out;
        done++;
        if (p.files[i].need == NEED_CREATE &&
            accounts_table_exists(c, &p, &p.accounts_exists, err, errlen) != 0)
            goto out;
    }
    if (done == 0)
        log_info("database schema is at head; nothing to apply", NULL);
    rc = 0;

out:
    if (applied)
        *applied = done;
    if (locked)
        pg_advisory_unlock(c, MIGRATE_LOCK_KEY, lerr, sizeof lerr);
    plan_free(&p);
    return rc;
}

int migrate_at_head(pg_conn *c, const config *cfg, char *err, size_t errlen)
{
    plan p = {0};
    int rc = -1;
    if (load_migrations(cfg, &p, err, errlen) != 0 || read_history(c, &p, err, errlen) != 0)
        goto out;
    rc = assess(&p, NULL, err, errlen) == HEAD_AT ? 1 : 0;
out:
    plan_free(&p);
    return rc;
}

/* ---- status and the CLI ------------------------------------------------- */

static const char *state_name(enum state st)
{
    return st == ST_APPLIED ? "applied" : st == ST_PENDING ? "pending" : "changed";
}

/* One element of the JSON "migrations" array; description and applied_at
 * may be NULL (JSON null). */
static void json_migration(json_out *o, const char *id, const char *description, const char *state,
                           const char *checksum, const char *applied_at)
{
    jo_object(o);
    jo_kstr(o, "id", id);
    jo_kstr(o, "description", description);
    jo_kstr(o, "state", state);
    jo_kstr(o, "checksum", checksum);
    jo_kstr(o, "applied_at", applied_at);
    jo_end(o);
}

static void status_json(const plan *p, enum head h, buf *b)
{
    json_out o;
    jo_init(&o, b);
    jo_object(&o);
    jo_kbool(&o, "at_head", h == HEAD_AT);
    jo_key(&o, "migrations");
    jo_array(&o);
    for (int i = 0; i < p->nfiles; i++) {
        const migration *m = &p->files[i];
        const applied_row *r = find_row(p, m->id);
        json_migration(&o, m->id, m->description, state_name(state_of(p, m)), m->checksum,
                       r ? r->applied_at : NULL);
    }
    for (int i = 0; i < p->nrows; i++) {
        const applied_row *r = &p->rows[i];
        if (!known(p, r->id))
            json_migration(&o, r->id, NULL, "unknown", r->checksum, r->applied_at);
    }
    jo_end(&o);
    jo_end(&o);
    buf_putc(b, '\n');
}

static void status_table(const plan *p, buf *b)
{
    int w = 2;
    for (int i = 0; i < p->nfiles; i++)
        if ((int)strlen(p->files[i].id) > w)
            w = (int)strlen(p->files[i].id);
    for (int i = 0; i < p->nrows; i++)
        if ((int)strlen(p->rows[i].id) > w)
            w = (int)strlen(p->rows[i].id);
    buf_printf(b, "%-*s  %-7s  %s\n", w, "ID", "STATE", "APPLIED_AT");
    for (int i = 0; i < p->nfiles; i++) {
        const applied_row *r = find_row(p, p->files[i].id);
        buf_printf(b, "%-*s  %-7s  %s\n", w, p->files[i].id,
                   state_name(state_of(p, &p->files[i])), r ? r->applied_at : "-");
    }
    for (int i = 0; i < p->nrows; i++)
        if (!known(p, p->rows[i].id))
            buf_printf(b, "%-*s  %-7s  %s\n", w, p->rows[i].id, "unknown", p->rows[i].applied_at);
}

int migrate_status(pg_conn *c, const config *cfg, FILE *out, int json, char *err, size_t errlen)
{
    plan p = {0};
    buf b = {0};
    char why[512];
    int rc = -1;
    if (load_migrations(cfg, &p, err, errlen) != 0 || read_history(c, &p, err, errlen) != 0)
        goto out;
    enum head h = assess(&p, NULL, why, sizeof why);
    if (json)
        status_json(&p, h, &b);
    else
        status_table(&p, &b);
    fputs(b.data, out);
    fflush(out);
    rc = 0;
out:
    buf_free(&b);
    plan_free(&p);
    return rc;
}

static void usage(FILE *f)
{
    fputs("usage: sync-airbnb-operator migrate up|status|check [-o json]\n"
          "\n"
          "Database migrations of the operator (schema sync_airbnb_operator, the\n"
          "accounts table if missing, and the NOTIFY trigger on it). The ordered\n"
          "list is Lua: $MIGRATIONS_DIR/init.lua.\n"
          "\n"
          "  up      apply pending migrations, each in its own transaction, under a\n"
          "          PostgreSQL advisory lock (a concurrent runner waits up to\n"
          "          MIGRATE_LOCK_TIMEOUT_SECONDS, then finds nothing to do); refuses\n"
          "          when an applied migration was changed or is unknown\n"
          "  status  table of migrations: applied, pending, changed, unknown\n"
          "          (-o json for JSON)\n"
          "  check   exit 0 when the schema is at head, 3 when migrations are\n"
          "          pending, 1 on any error; prints one line\n"
          "\n"
          "The accounts table is sync-airbnb's: migrations that need it wait until\n"
          "its own migrations (alembic upgrade head) created it: `up` applies the\n"
          "others, waits up to MIGRATE_WAIT_SECONDS, and exits 4 if it is still\n"
          "missing. MIGRATE_CREATE_ACCOUNTS_TABLE=true creates it (demo, tests).\n"
          "\n"
          "Uses DATABASE_URL, MIGRATIONS_DIR, ACCOUNTS_TABLE, DB_STATEMENT_TIMEOUT_MS,\n"
          "MIGRATE_LOCK_TIMEOUT_SECONDS, MIGRATE_WAIT_SECONDS,\n"
          "MIGRATE_CREATE_ACCOUNTS_TABLE. See docs/migrations.md.\n",
          f);
}

int migrate_main(const config *cfg, int argc, char **argv)
{
    const char *cmd = NULL;
    int json = cfg->output_json;
    char err[1024];
    pg_conn *c = NULL;
    int rc = MIGRATE_EXIT_ERROR;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0) {
            usage(stdout);
            return MIGRATE_EXIT_OK;
        } else if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && i + 1 < argc) {
            a = argv[++i];
            if (strcmp(a, "json") != 0 && strcmp(a, "table") != 0)
                goto bad_output;
            json = strcmp(a, "json") == 0;
        } else if (strncmp(a, "-o=", 3) == 0 || strncmp(a, "--output=", 9) == 0) {
            a = strchr(a, '=') + 1;
            if (strcmp(a, "json") != 0 && strcmp(a, "table") != 0)
                goto bad_output;
            json = strcmp(a, "json") == 0;
        } else if (a[0] == '-') {
            fprintf(stderr, "migrate: unknown flag %s (see migrate --help)\n", a);
            return MIGRATE_EXIT_USAGE;
        } else if (cmd == NULL) {
            cmd = a;
        } else {
            fprintf(stderr, "migrate: unexpected argument \"%s\" (see migrate --help)\n", a);
            return MIGRATE_EXIT_USAGE;
        }
    }
    if (cmd == NULL || (strcmp(cmd, "up") != 0 && strcmp(cmd, "status") != 0 &&
                        strcmp(cmd, "check") != 0)) {
        if (cmd)
            fprintf(stderr, "migrate: unknown command \"%s\"\n", cmd);
        usage(stderr);
        return MIGRATE_EXIT_USAGE;
    }

    c = pg_connect(cfg->database_url, cfg->db_timeout_ms, err, sizeof err);
    if (c == NULL) {
        fprintf(stderr, "migrate %s: %s\n", cmd, err);
        return MIGRATE_EXIT_ERROR;
    }
    if (strcmp(cmd, "up") == 0) {
        int n, up, logged = 0;
        uint64_t give_up = util_now_ms() + (uint64_t)cfg->migrate_wait_s * 1000;
        /* Applies what it can, then waits (without the lock) for sync-airbnb's
         * migrations to create the accounts table, and goes on. */
        while ((up = migrate_up(c, cfg, &n, err, sizeof err)) == 1 && util_now_ms() < give_up) {
            if (!logged) {
                char secs[16];
                snprintf(secs, sizeof secs, "%d", cfg->migrate_wait_s);
                log_info("waiting for sync-airbnb's migrations to create the accounts table",
                         "reason", err, "timeout_s", secs, NULL);
            }
            logged = 1;
            usleep(1000 * 1000);
        }
        if (up == 1) {
            log_warn("migrate up stopped: the accounts table does not exist", "reason", err, NULL);
            fprintf(stderr, "migrate up: %s\n", err);
            rc = MIGRATE_EXIT_WAITING;
            goto out;
        }
        if (up != 0) {
            log_error("migrate up failed", "error", err, NULL);
            fprintf(stderr, "migrate up: %s\n", err);
            goto out;
        }
        char count[16];
        snprintf(count, sizeof count, "%d", n);
        log_info("migrate up done", "applied", count, NULL);
        rc = MIGRATE_EXIT_OK;
    } else if (strcmp(cmd, "status") == 0) {
        if (migrate_status(c, cfg, stdout, json, err, sizeof err) != 0) {
            fprintf(stderr, "migrate status: %s\n", err);
            goto out;
        }
        rc = MIGRATE_EXIT_OK;
    } else {
        plan p = {0};
        if (load_migrations(cfg, &p, err, sizeof err) != 0 ||
            read_history(c, &p, err, sizeof err) != 0) {
            plan_free(&p);
            fprintf(stderr, "migrate check: %s\n", err);
            goto out;
        }
        enum head h = assess(&p, NULL, err, sizeof err);
        if (h == HEAD_AT) {
            printf("schema at head (%d migrations applied)\n", p.nfiles);
            rc = MIGRATE_EXIT_OK;
        } else if (h == HEAD_PENDING) {
            printf("%s\n", err);
            rc = MIGRATE_EXIT_PENDING;
        } else {
            fprintf(stderr, "migrate check: %s\n", err);
        }
        fflush(stdout);
        plan_free(&p);
    }
out:
    pg_close(c);
    return rc;

bad_output:
    fprintf(stderr, "migrate: -o wants json or table\n");
    return MIGRATE_EXIT_USAGE;
}
