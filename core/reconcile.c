/* reconcile: see reconcile.h. */
#include "reconcile.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "json.h"
#include "log.h"
#include "pg.h"
#include "safety.h"
#include "scrub.h"
#include "util.h"

static const char *const account_columns[] = {"account_id", "customer_id", "airbnb_cookie",
                                              "x_client_version", "user_agent", "is_active",
                                              "last_sync_at", "updated_at", "deleted_at"};
#define NCOLUMNS (sizeof account_columns / sizeof account_columns[0])

/* The accounts table, quoted (its names are validated by config.c). */
static char *accounts_table(const config *cfg)
{
    char *s = pg_quote_ident(cfg->accounts_schema), *t = pg_quote_ident(cfg->accounts_relname);
    char *table = xasprintf("%s.%s", s, t);
    free(s);
    free(t);
    return table;
}

/* credentials_generation: credential changes made by anyone but the worker
 * (migration 005_credentials_generation), read in the same statement as the
 * row so the two are one snapshot.
 * What the rules see of a row, in the text forms they get; its sha256 (as
 * base64) is the row's part of the settle digest (settle_key), computed by
 * the database so that a full pass reads no credentials. A record's text
 * form quotes its fields, so no two rows give the same text. */
#define INPUT_VALUES                                                                                  \
    "a.account_id::text, a.customer_id::text, a.airbnb_cookie, a.x_client_version, a.user_agent, " \
    "a.is_active, a.last_sync_at::text, a.updated_at::text, a.deleted_at::text, "                  \
    "coalesce(g.generation, 0)::text"

static char *accounts_sql(const config *cfg, const char *columns, const char *where)
{
    char *table = accounts_table(cfg);
    char *sql = xasprintf(
        "SELECT %s, encode(sha256(convert_to(row(" INPUT_VALUES ")::text, 'UTF8')), 'base64') AS " REC_DIGEST_COLUMN
        " FROM %s a LEFT JOIN sync_airbnb_operator.credentials_generation g "
        "ON g.account_key = sha256(convert_to(a.account_id::text, 'UTF8'))%s",
        columns, table, where);
    free(table);
    return sql;
}

char *rec_accounts_sql(const config *cfg, int partial)
{
    return accounts_sql(cfg,
                        "a.account_id::text AS account_id, a.customer_id::text AS customer_id, a.airbnb_cookie, "
                        "a.x_client_version, a.user_agent, a.is_active, a.last_sync_at::text AS last_sync_at, "
                        "a.updated_at::text AS updated_at, a.deleted_at::text AS deleted_at, "
                        "coalesce(g.generation, 0)::text AS credentials_generation",
                        partial ? " WHERE a.account_id::text = ANY($1::text[])" : "");
}

char *rec_accounts_light_sql(const config *cfg)
{
    return accounts_sql(cfg,
                        "a.account_id::text AS account_id, NULL::text AS customer_id, NULL::text AS airbnb_cookie, "
                        "NULL::text AS x_client_version, NULL::text AS user_agent, a.is_active, "
                        "NULL::text AS last_sync_at, NULL::text AS updated_at, a.deleted_at::text AS deleted_at, "
                        "coalesce(g.generation, 0)::text AS credentials_generation",
                        "");
}

char *rec_account_ids_sql(const config *cfg)
{
    char *table = accounts_table(cfg);
    char *sql = xasprintf("SELECT account_id::text FROM %s", table);
    free(table);
    return sql;
}

char *rec_active_any_sql(const config *cfg)
{
    char *table = accounts_table(cfg);
    char *sql = xasprintf("SELECT count(*) FROM (SELECT 1 FROM %s WHERE is_active AND deleted_at IS NULL "
                          "LIMIT 1) AS any_active", table);
    free(table);
    return sql;
}

char *rec_text_array(const char *const *ids, size_t n)
{
    buf b = {0};
    buf_putc(&b, '{');
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_putc(&b, ',');
        buf_putc(&b, '"');
        for (const char *p = ids[i]; *p; p++) {
            if (*p == '"' || *p == '\\')
                buf_putc(&b, '\\');
            buf_putc(&b, *p);
        }
        buf_putc(&b, '"');
    }
    buf_putc(&b, '}');
    return buf_steal(&b);
}

/* ---- the input rows ---------------------------------------------------------- */

typedef struct row_index {
    const plan_input *in;
    int col[NCOLUMNS];
    strmap by_id;        /* account_id → row + 1 (as a pointer-sized int) */
    unsigned char *skip; /* per row: settled, not handed to the rules */
    unsigned char (*keys)[16]; /* per row: settle digest (NULL without in->settled) */
    unsigned char *has_key;    /* per row: keys[i] is set */
    unsigned char *deferred; /* per row: left for a later pass (skip is set too) */
    unsigned char *in_sync;  /* per row: active, has a Deployment carrying an applied hash and not
                              * drifted: planning it most likely only settles it */
    scrub_set *secrets; /* credential values of the rows handed to the rules (safety.h) */
    int no_orphans;     /* call_plan(-1) shows only the Deployments of the rows handed over */
} row_index;

static void index_rows(row_index *ri, const plan_input *in)
{
    memset(ri, 0, sizeof *ri);
    ri->by_id.borrowed_keys = 1; /* the rows' own values */
    ri->in = in;
    for (size_t c = 0; c < NCOLUMNS; c++)
        ri->col[c] = rows_column(in->accounts, account_columns[c]);
    for (int i = 0; i < in->accounts->nrows; i++) {
        const char *id = rows_value(in->accounts, i, ri->col[0]);
        if (id)
            strmap_put(&ri->by_id, id, (void *)(intptr_t)(i + 1));
    }
}

/* ---- Lua inputs ---------------------------------------------------------- */

void rec_push_account(lua_State *L, const acct_rows *rows, int row)
{
    lua_createtable(L, 0, (int)NCOLUMNS);
    for (int c = 0; c < rows->ncols; c++) {
        const char *v = rows_value(rows, row, c);
        if (v == NULL || strcmp(rows->names[c], REC_DIGEST_COLUMN) == 0) /* the operator's, not the rules' */
            continue;
        if (rows->is_bool[c])
            lua_pushboolean(L, v[0] == 't');
        else
            lua_pushstring(L, v);
        lua_setfield(L, -2, rows->names[c]);
    }
}

void rec_push_observed(lua_State *L, const obs_deploy *d)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, d->name);
    lua_setfield(L, -2, "name");
    if (d->account_id) {
        lua_pushstring(L, d->account_id);
        lua_setfield(L, -2, "account_id");
    }
    if (d->applied_hash) {
        lua_pushstring(L, d->applied_hash);
        lua_setfield(L, -2, "applied_hash");
    }
    if (d->fingerprint) {
        lua_pushstring(L, d->fingerprint);
        lua_setfield(L, -2, "fingerprint");
    }
    lua_createtable(L, 0, d->nann);
    for (int i = 0; i < d->nann; i++) {
        lua_pushstring(L, d->ann_values[i]);
        lua_setfield(L, -2, d->ann_keys[i]);
    }
    lua_setfield(L, -2, "annotations");
    lua_pushinteger(L, d->generation);
    lua_setfield(L, -2, "generation");
    lua_pushboolean(L, d->applied_generation > 0 && d->generation > d->applied_generation);
    lua_setfield(L, -2, "drifted");
    lua_pushinteger(L, d->replicas);
    lua_setfield(L, -2, "replicas");
    lua_pushinteger(L, d->ready_replicas);
    lua_setfield(L, -2, "ready_replicas");
}

/* Pushes observed filtered to one account id (NULL: all). */
static void push_observed(lua_State *L, strmap *observed, const char *only_account, int orphans_only,
                          const row_index *ri)
{
    lua_newtable(L);
    size_t it = 0;
    void *v;
    while (strmap_next(observed, &it, NULL, &v)) {
        const obs_deploy *d = v;
        if (!d->managed)
            continue;
        if (only_account && (d->account_id == NULL || strcmp(d->account_id, only_account) != 0))
            continue;
        if (orphans_only && d->account_id && strmap_get(&ri->by_id, d->account_id))
            continue;
        if (ri->no_orphans && !only_account && (d->account_id == NULL || !strmap_get(&ri->by_id, d->account_id)))
            continue;
        if (ri->skip && d->account_id) {
            intptr_t row = (intptr_t)strmap_get(&ri->by_id, d->account_id);
            if (row > 0 && ri->skip[row - 1])
                continue;
        }
        rec_push_observed(L, d);
        lua_setfield(L, -2, d->name);
    }
}

/* ---- reading the actions ------------------------------------------------- */

/* The actions passed luahost_call_rule's check (plain data): raw reads. */
static int raw_field(lua_State *L, int idx, const char *key)
{
    idx = lua_absindex(L, idx);
    lua_pushstring(L, key);
    return lua_rawget(L, idx);
}

static const char *field_string(lua_State *L, int idx, const char *key, char *tmp, size_t tmplen)
{
    raw_field(L, idx, key);
    const char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        snprintf(tmp, tmplen, "%s", lua_tostring(L, -1));
        s = tmp;
    }
    lua_pop(L, 1);
    return s;
}

/* A string field of any length (account ids are arbitrary strings), copied:
 * the caller frees it. NULL when the field is not a string. */
static char *field_dup(lua_State *L, int idx, const char *key)
{
    raw_field(L, idx, key);
    char *s = lua_type(L, -1) == LUA_TSTRING ? xstrdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return s;
}

/* The object of the action at index t, JSON-encoded in its own protected,
 * budgeted call (proposal.encode): leaves the encoding on the stack. */
typedef struct encode_req {
    lua_State *L;
    int t;
    int budget_ms;
} encode_req;

static int encode_object(void *ud, const char **json, size_t *len, char *err, size_t errlen)
{
    encode_req *e = ud;
    lua_State *L = e->L;
    if (raw_field(L, e->t, "object") != LUA_TTABLE) {
        util_seterr(err, errlen, "rules: a create/update action has no object table");
        return -1;
    }
    lua_pushcfunction(L, json_lua_encode);
    lua_insert(L, -2);
    if (luahost_pcall(L, 1, 1, e->budget_ms, err, errlen) < 0)
        return -1;
    *json = lua_tolstring(L, -1, len);
    return 0;
}

/* Reads the actions array at the top of the stack into out (pops it),
 * each through the safety filter (safety_admit). The array came out of
 * luahost_call_rule, so it is plain data: raw reads only. */
static void read_actions(lua_State *L, const config *cfg, const plan_input *in, const row_index *ri,
                         const char *version, plan_result *out)
{
    int arr = lua_gettop(L);
    if (!lua_istable(L, arr)) {
        action_push(out, ACT_ERROR, NULL, NULL, "rules: plan() did not return a table of actions");
        out->refused++;
        lua_pop(L, 1);
        return;
    }
    safety_ctx sc = {.cfg = cfg, .rows = in->accounts, .id_col = ri->col[0], .by_id = &ri->by_id,
                     .observed = in->observed, .secrets = ri->secrets, .rules_version = version};
    lua_Integer n = (lua_Integer)lua_rawlen(L, arr);
    for (lua_Integer i = 1; i <= n; i++) {
        char kbuf[32], nbuf[256], rbuf[512], hbuf[128];
        if (lua_rawgeti(L, arr, i) != LUA_TTABLE) {
            lua_pop(L, 1);
            action_push(out, ACT_ERROR, NULL, NULL, "rules: an action is not a table");
            out->refused++;
            continue;
        }
        int t = lua_gettop(L);
        char *rid = field_dup(L, t, "account_id"); /* account ids are arbitrary strings */
        encode_req enc = {L, t, cfg->rules_budget_ms};
        proposal p = {.kind = field_string(L, t, "action", kbuf, sizeof kbuf),
                      .account_id = rid,
                      .name = field_string(L, t, "name", nbuf, sizeof nbuf),
                      .reason = field_string(L, t, "reason", rbuf, sizeof rbuf),
                      .desired_hash = field_string(L, t, "desired_hash", hbuf, sizeof hbuf),
                      .encode = encode_object,
                      .encode_ud = &enc};
        safety_admit(&sc, &p, out);
        free(rid);
        lua_settop(L, t - 1); /* the action and what encode left */
    }
    lua_pop(L, 1);
}

/* Calls rules.plan(accounts, observed, ctx) with the given subset. row < 0:
 * the rows not skipped and their Deployments, and the orphaned ones unless
 * ri->no_orphans; else only that row and its Deployments; row ==
 * nrows: no rows, only the orphaned Deployments. Leaves the actions table on
 * the stack and returns 0, or -1 with err (stack unchanged). */
static int call_plan(rules *r, luahost *h, const config *cfg, const plan_input *in, const row_index *ri,
                     int row, char *err, size_t errlen)
{
    lua_State *L = luahost_state(h);
    int nrows = in->accounts->nrows;
    luahost_push_entry_field(h, "plan");
    if (row < 0) {
        int handed = nrows;
        for (int i = 0; ri->skip && i < nrows; i++)
            handed -= ri->skip[i];
        lua_createtable(L, handed, 0);
        int n = 0;
        for (int i = 0; i < nrows; i++) {
            if (ri->skip && ri->skip[i])
                continue;
            rec_push_account(L, in->accounts, i);
            lua_rawseti(L, -2, ++n);
        }
        push_observed(L, in->observed, NULL, 0, ri);
    } else if (row < nrows) {
        lua_createtable(L, 1, 0);
        rec_push_account(L, in->accounts, row);
        lua_rawseti(L, -2, 1);
        const char *id = rows_value(in->accounts, row, ri->col[0]);
        if (id == NULL)
            id = "";
        push_observed(L, in->observed, id, 0, ri);
    } else {
        lua_newtable(L);
        push_observed(L, in->observed, NULL, 1, ri);
    }
    rules_push_ctx(r, L);
    /* The budget stops runaway rules; it grows with the work handed over. */
    int budget = cfg->rules_budget_ms + (row < 0 ? nrows : 1);
    return luahost_call_rule(L, "plan", 3, budget, err, errlen);
}

/* After a failed call: plans rows[0..n) in halves, then quarters, ... so
 * that an error stays with the account that causes it (a leaf of one row)
 * while the others are planned in a few calls, not one each: a call that
 * ran out of the rules' memory (640 renders in a burst of credential
 * changes at 100,000 accounts) costs two calls, not 640. Orphans are not
 * shown (the caller plans them once). */
static void plan_split(rules *r, const config *cfg, const plan_input *in, row_index *ri, const int *rows, int n,
                       plan_result *out)
{
    int nrows = in->accounts->nrows;
    lua_State *L = luahost_state(rules_host(r));
    char err[1024];
    int rc;
    if (n == 1) {
        rc = call_plan(r, rules_host(r), cfg, in, ri, rows[0], err, sizeof err);
    } else {
        unsigned char *saved = ri->skip, *mask = xmalloc((size_t)nrows + 1);
        memset(mask, 1, (size_t)nrows + 1);
        for (int k = 0; k < n; k++)
            mask[rows[k]] = 0;
        ri->skip = mask;
        ri->no_orphans = 1;
        rc = call_plan(r, rules_host(r), cfg, in, ri, -1, err, sizeof err);
        ri->skip = saved;
        ri->no_orphans = 0;
        free(mask);
    }
    if (rc == 0) {
        read_actions(L, cfg, in, ri, rules_version(r), out);
    } else if (n == 1) {
        action_push(out, ACT_ERROR, rows_value(in->accounts, rows[0], ri->col[0]), NULL, err);
    } else {
        plan_split(r, cfg, in, ri, rows, n / 2, out);
        plan_split(r, cfg, in, ri, rows + n / 2, n - n / 2, out);
    }
}

static int is_active_row(const plan_input *in, const row_index *ri, int i)
{
    int a = ri->col[5], d = ri->col[8];
    const char *active = rows_value(in->accounts, i, a);
    if (active == NULL || !in->accounts->is_bool[a] || active[0] != 't')
        return 0;
    return rows_value(in->accounts, i, d) == NULL;
}

/* ---- settled accounts ------------------------------------------------------ */

static const unsigned char no_digest[16]; /* all-zero: an empty slot, never a digest */

static size_t settled_slot(const rec_settled *s, const unsigned char d[16], int *found)
{
    uint64_t h;
    memcpy(&h, d, sizeof h);
    size_t mask = s->cap - 1, i = (size_t)h & mask;
    for (;;) {
        if (memcmp(s->slots[i], d, 16) == 0) {
            *found = 1;
            return i;
        }
        if (memcmp(s->slots[i], no_digest, 16) == 0) {
            *found = 0;
            return i;
        }
        i = (i + 1) & mask;
    }
}

static int settled_has(const rec_settled *s, const unsigned char d[16])
{
    int found = 0;
    if (s->cap)
        settled_slot(s, d, &found);
    return found;
}

void rec_settled_add(rec_settled *s, const unsigned char d[16])
{
    if ((s->len + 1) * 4 > s->cap * 3) { /* load <= 3/4: the digests are uniform */
        rec_settled bigger = {xcalloc(s->cap ? s->cap * 2 : 64, 16), s->cap ? s->cap * 2 : 64, 0};
        for (size_t i = 0; i < s->cap; i++) {
            if (memcmp(s->slots[i], no_digest, 16) != 0)
                rec_settled_add(&bigger, s->slots[i]);
        }
        free(s->slots);
        *s = bigger;
    }
    int found;
    size_t i = settled_slot(s, d, &found);
    if (!found) {
        memcpy(s->slots[i], d, 16);
        s->len++;
    }
}

void rec_settled_free(rec_settled *settled)
{
    free(settled->slots);
    memset(settled, 0, sizeof *settled);
}

/* The settle digest of row i: everything the rules see of this account.
 * Returns 0, or -1 when the account is never settled (several Deployments). */
static int settle_key(rules *r, const config *cfg, const plan_input *in, int i, int digest_col,
                      strmap *deploy_by_account, unsigned char out[16])
{
    buf b = {0};
    buf_puts(&b, rules_version(r));
    buf_putc(&b, '\0');
    buf_puts(&b, cfg->worker_image);
    buf_putc(&b, '\0');
    buf_puts(&b, cfg->namespace);
    buf_putc(&b, '\0');
    const char *row_digest = rows_value(in->accounts, i, digest_col);
    if (row_digest) { /* the database's (rec_accounts_sql): a light row has it too */
        buf_puts(&b, row_digest);
        buf_putc(&b, '\0');
    } else if (in->light) { /* no digest, no values: never settled */
        buf_free(&b);
        return -1;
    } else {
        for (int c = 0; c < in->accounts->ncols; c++) {
            const char *v = rows_value(in->accounts, i, c);
            buf_puts(&b, v ? v : "\x01NULL");
            buf_putc(&b, '\0');
        }
    }
    const char *id = rows_value(in->accounts, i, 0);
    const obs_deploy *d = strmap_get(deploy_by_account, id);
    if (d == (const obs_deploy *)deploy_by_account) { /* several Deployments: never settled */
        buf_free(&b);
        return -1;
    }
    if (d) { /* its digest, made once per version of it (cache.h); the applied generation is set later */
        buf_putc(&b, '\x02');
        buf_append(&b, (const char *)d->digest, sizeof d->digest);
        char num[24];
        int n = snprintf(num, sizeof num, "%ld", d->applied_generation);
        buf_append(&b, num, (size_t)n);
    }
    unsigned char md[32];
    util_sha256(b.data, b.len, md);
    buf_free(&b);
    memcpy(out, md, 16);
    if (memcmp(out, no_digest, 16) == 0)
        out[15] = 1;
    return 0;
}

static void settle_prepare(rules *r, const config *cfg, const plan_input *in, row_index *ri)
{
    int nrows = in->accounts->nrows;
    ri->skip = xcalloc((size_t)nrows + 1, 1);
    ri->keys = xcalloc((size_t)nrows + 1, sizeof *ri->keys);
    ri->has_key = xcalloc((size_t)nrows + 1, 1);
    ri->in_sync = xcalloc((size_t)nrows + 1, 1);
    strmap by_account = STRMAP_BORROWED;
    size_t it = 0;
    void *v;
    while (strmap_next(in->observed, &it, NULL, &v)) {
        obs_deploy *d = v;
        if (!d->managed || d->account_id == NULL)
            continue;
        if (strmap_get(&by_account, d->account_id))
            strmap_put(&by_account, d->account_id, &by_account); /* marker: several */
        else
            strmap_put(&by_account, d->account_id, d);
    }
    int digest_col = rows_column(in->accounts, REC_DIGEST_COLUMN);
    for (int i = 0; i < nrows; i++) {
        const char *id = rows_value(in->accounts, i, ri->col[0]);
        if (id == NULL)
            continue;
        ri->has_key[i] = settle_key(r, cfg, in, i, digest_col, &by_account, ri->keys[i]) == 0;
        const obs_deploy *d = strmap_get(&by_account, id);
        /* An inactive account's worker is not: its delete goes with the
         * first accounts planned (a restart after deactivations catches up
         * in its first pass, not after every in-sync row before it). */
        ri->in_sync[i] = is_active_row(in, ri, i) && d && d != (const obs_deploy *)&by_account && d->applied_hash &&
                         !(d->applied_generation > 0 && d->generation > d->applied_generation);
        ri->skip[i] = ri->has_key[i] && settled_has(in->settled, ri->keys[i]);
    }
    strmap_free(&by_account);
}

/* After a plan: accounts that got no action are settled at their digest. A
 * full pass rebuilds the set from the live rows (forgetting accounts that
 * are gone and digests of earlier states); a partial pass only adds. */
static void settle_commit(const plan_input *in, row_index *ri, const plan_result *out)
{
    strmap acted = STRMAP_BORROWED;
    for (size_t i = 0; i < out->n; i++)
        if (out->actions[i].account_id)
            strmap_put(&acted, out->actions[i].account_id, (void *)1);
    int nrows = in->accounts->nrows;
    rec_settled fresh = {0};
    if (in->full && in->settled->cap > 0) /* about as many as last time: no rehash while it fills */
        fresh = (rec_settled){xcalloc(in->settled->cap, 16), in->settled->cap, 0};
    rec_settled *into = in->full ? &fresh : in->settled;
    for (int i = 0; i < nrows; i++) {
        const char *id = rows_value(in->accounts, i, ri->col[0]);
        if (id == NULL || !ri->has_key[i])
            continue;
        int was_settled = ri->skip[i] && !(ri->deferred && ri->deferred[i]);
        int settles_now = !ri->skip[i] && !strmap_get(&acted, id);
        if (was_settled || settles_now)
            rec_settled_add(into, ri->keys[i]);
    }
    if (in->full) {
        rec_settled_free(in->settled);
        *in->settled = fresh;
    }
    strmap_free(&acted);
}

int rec_plan(rules *r, const config *cfg, const plan_input *in, plan_result *out, char *err,
             size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (rules_host(r) == NULL) {
        util_seterr(err, errlen, "no rules loaded");
        return -1;
    }
    for (size_t c = 0; c < NCOLUMNS; c++) {
        if (rows_column(in->accounts, account_columns[c]) < 0) {
            util_seterr(err, errlen, "accounts query has no column %s", account_columns[c]);
            return -1;
        }
    }
    row_index ri;
    index_rows(&ri, in);
    lua_State *L = luahost_state(rules_host(r));
    int nrows = in->accounts->nrows;
    for (int i = 0; i < nrows; i++)
        out->desired += is_active_row(in, &ri, i);
    size_t it = 0;
    void *v;
    while (strmap_next(in->observed, &it, NULL, &v))
        out->observed += ((obs_deploy *)v)->managed;

    if (in->settled)
        settle_prepare(r, cfg, in, &ri);
    out->planned = nrows;
    for (int i = 0; ri.skip && i < nrows; i++)
        out->planned -= ri.skip[i];
    if (in->busy && in->busy->len > 0) {
        /* Accounts with a write in flight are planned when it has finished. */
        if (ri.skip == NULL)
            ri.skip = xcalloc((size_t)nrows + 1, 1);
        ri.deferred = xcalloc((size_t)nrows + 1, 1);
        for (int i = 0; i < nrows; i++) {
            const char *id = rows_value(in->accounts, i, ri.col[0]);
            if (ri.skip[i] || id == NULL)
                continue;
            if (strmap_get(in->busy, id)) {
                ri.skip[i] = ri.deferred[i] = 1;
                out->deferred++;
                out->planned--;
            }
        }
    }
    if (in->light) {
        /* No row carries what the rules need: each one not settled is read
         * again, whole, by id (a partial pass of the backlog). */
        if (ri.skip == NULL)
            ri.skip = xcalloc((size_t)nrows + 1, 1);
        if (ri.deferred == NULL)
            ri.deferred = xcalloc((size_t)nrows + 1, 1);
        for (int i = 0; i < nrows; i++) {
            if (ri.skip[i] || rows_value(in->accounts, i, ri.col[0]) == NULL)
                continue;
            ri.skip[i] = ri.deferred[i] = 1;
            out->deferred++;
        }
        out->planned = 0;
    }
    if (in->max_rows > 0 && out->planned > in->max_rows) {
        /* Defer the rest: treated like settled rows for this call (their
         * Deployments are not shown to the rules, so they are not orphans),
         * but not settled afterwards. */
        unsigned char *deferred = ri.deferred ? ri.deferred : xcalloc((size_t)nrows + 1, 1);
        if (ri.skip == NULL)
            ri.skip = xcalloc((size_t)nrows + 1, 1);
        int taken = 0, planned_in_sync = 0;
        for (int i = 0; i < nrows; i++) {
            if (ri.skip[i])
                continue;
            if (ri.in_sync && ri.in_sync[i]) {
                /* Most likely only settles (no write): an allowance of its
                 * own, wider, and never the other rows' places, so that the
                 * writes of a pass are not crowded out by the accounts the
                 * previous pass just created, nor a restart's deletes by the
                 * thousands of workers that are fine. 4 chunks' worth: with
                 * 8 (1,152 accounts in one call) the shipped rules came near
                 * their 48 MiB memory limit at 100,000 accounts and fell back
                 * to planning each account alone. */
                if (planned_in_sync < 4 * in->max_rows) {
                    planned_in_sync++;
                    continue;
                }
                ri.skip[i] = 1;
                deferred[i] = 1;
                out->deferred++;
            } else if (taken < in->max_rows) {
                taken++;
            } else {
                ri.skip[i] = 1;
                deferred[i] = 1;
                out->deferred++;
            }
        }
        out->planned = taken + planned_in_sync;
        ri.deferred = deferred;
    }
    if (out->deferred > 0) { /* so the caller can continue with exactly these */
        /* A light pass defers the in-sync rows last: they most likely only
         * settle, and a restart's deletes or a change's roll come first. */
        buf ids = {0};
        for (int late = 0; late < 2; late++)
            for (int i = 0; i < nrows; i++)
                if (ri.deferred[i] && (in->light && ri.in_sync && ri.in_sync[i]) == late)
                    buf_append(&ids, rows_value(in->accounts, i, ri.col[0]),
                               strlen(rows_value(in->accounts, i, ri.col[0])) + 1);
        out->deferred_ids = ids.data;
        out->deferred_ids_len = ids.len;
    }

    ri.secrets = safety_secrets(in->accounts, ri.skip);

    char perr[1024];
    if (call_plan(r, rules_host(r), cfg, in, &ri, -1, perr, sizeof perr) == 0) {
        read_actions(L, cfg, in, &ri, rules_version(r), out);
    } else {
        /* The plan as a whole failed: plan the accounts in halves, down to
         * one, so the error stays with the account that causes it; then the
         * orphaned Deployments on their own. */
        char *why = xstrdup(perr); /* a rule's error can quote what it was given */
        safety_scrub(ri.secrets, &why);
        log_warn("rules: plan failed; planning the accounts in smaller groups", "error", why, NULL);
        free(why);
        int *handed = xcalloc((size_t)nrows + 1, sizeof *handed), nhanded = 0;
        for (int i = 0; i < nrows; i++)
            if (!(ri.skip && ri.skip[i]))
                handed[nhanded++] = i;
        if (nhanded > 0)
            plan_split(r, cfg, in, &ri, handed, nhanded, out);
        free(handed);
        char aerr[1024];
        if (call_plan(r, rules_host(r), cfg, in, &ri, nrows, aerr, sizeof aerr) == 0)
            read_actions(L, cfg, in, &ri, rules_version(r), out);
        else
            action_push(out, ACT_ERROR, NULL, NULL, aerr);
    }

    /* The safety filter over the whole plan: the empty-set hold and the
     * delete budget (DESIGN.md §5.2). */
    safety_hold_deletes(cfg, out, in->full ? out->desired : in->active_total, in->delete_allowance);
    for (size_t i = 0; i < out->n; i++)
        safety_scrub(ri.secrets, &out->actions[i].reason);
    scrub_set_free(ri.secrets);
    if (in->settled)
        settle_commit(in, &ri, out);
    /* Give the rendered objects back now: the next pass may be a while away
     * and a steady RSS is a goal (docs/benchmarks.md). */
    if (out->planned > 0)
        lua_gc(L, LUA_GCCOLLECT);
    free(ri.keys);
    free(ri.has_key);
    free(ri.skip);
    free(ri.deferred);
    free(ri.in_sync);
    strmap_free(&ri.by_id);
    return 0;
}

/* Appends src's actions to dst (moved: src keeps none) and its counts. */
static void plan_absorb(plan_result *dst, plan_result *src)
{
    dst->actions = xrealloc(dst->actions, (dst->n + src->n + 1) * sizeof *dst->actions);
    if (src->n > 0) /* a chunk with no action has no array: memcpy must not see NULL */
        memcpy(dst->actions + dst->n, src->actions, src->n * sizeof *src->actions);
    dst->n += src->n;
    src->n = 0;
    dst->held_deletes += src->held_deletes;
    dst->refused += src->refused;
    dst->planned += src->planned;
    if (dst->hold_reason == NULL) {
        dst->hold_reason = src->hold_reason;
        src->hold_reason = NULL;
    }
    rec_plan_free(src);
}

static int count_deletes(const plan_result *p)
{
    int n = 0;
    for (size_t i = 0; i < p->n; i++)
        n += p->actions[i].kind == ACT_DELETE;
    return n;
}

int rec_plan_all(rules *r, const config *cfg, const plan_input *in, plan_result *out, char *err, size_t errlen)
{
    plan_input first = *in;
    first.settled = NULL;
    first.max_rows = REC_PLAN_CHUNK;
    if (rec_plan(r, cfg, &first, out, err, errlen) < 0)
        return -1;
    if (out->deferred == 0)
        return 0;
    /* The deferred accounts' rows and Deployments, found once. */
    row_index ri;
    index_rows(&ri, in);
    strmap deploys = STRMAP_BORROWED; /* account id -> first of its Deployments (linked by next) */
    size_t nobs = in->observed->len, k = 0, it = 0;
    struct dlink {
        const char *name;
        obs_deploy *d;
        struct dlink *next;
    } *links = xcalloc(nobs + 1, sizeof *links);
    void *v;
    const char *name;
    while (strmap_next(in->observed, &it, &name, &v)) {
        obs_deploy *d = v;
        if (d->account_id == NULL || k >= nobs)
            continue;
        links[k] = (struct dlink){name, d, strmap_get(&deploys, d->account_id)};
        strmap_put(&deploys, d->account_id, &links[k++]);
    }
    int *rows = xcalloc(REC_PLAN_CHUNK, sizeof *rows);
    int rc = 0, deletes = count_deletes(out);
    const char *next = out->deferred_ids, *end = out->deferred_ids + out->deferred_ids_len;
    while (rc == 0 && next < end) {
        int n = 0;
        strmap observed = STRMAP_BORROWED;
        for (; next < end && n < REC_PLAN_CHUNK; next += strlen(next) + 1) {
            intptr_t row = (intptr_t)strmap_get(&ri.by_id, next);
            if (row <= 0)
                continue;
            rows[n++] = (int)row - 1;
            for (struct dlink *l = strmap_get(&deploys, next); l; l = l->next)
                strmap_put(&observed, l->name, l->d);
        }
        acct_rows subset;
        rows_subset(&subset, in->accounts, rows, n);
        plan_input part = {.accounts = &subset, .observed = &observed, .full = 0, .active_total = out->desired,
                           .delete_allowance = in->delete_allowance > deletes ? in->delete_allowance - deletes : 0,
                           .settled = NULL, .max_rows = REC_PLAN_CHUNK, .busy = NULL};
        plan_result chunk;
        rc = rec_plan(r, cfg, &part, &chunk, err, errlen);
        if (rc == 0) {
            deletes += count_deletes(&chunk);
            plan_absorb(out, &chunk);
        }
        rows_free(&subset);
        strmap_free(&observed);
    }
    free(out->deferred_ids);
    out->deferred_ids = NULL;
    out->deferred_ids_len = 0;
    out->deferred = 0;
    if (rc < 0)
        rec_plan_free(out);
    free(rows);
    free(links);
    strmap_free(&deploys);
    strmap_free(&ri.by_id);
    return rc;
}

int rec_check_plan(rules *r, luahost *candidate, const config *cfg, const plan_input *in, char *err,
                   size_t errlen)
{
    row_index ri;
    index_rows(&ri, in);
    int nrows = in->accounts->nrows;
    if (in->max_rows > 0 && nrows > in->max_rows) { /* a sample is enough to prove it runs */
        ri.skip = xcalloc((size_t)nrows + 1, 1);
        for (int i = in->max_rows; i < nrows; i++)
            ri.skip[i] = 1;
    }
    ri.secrets = safety_secrets(in->accounts, ri.skip);
    lua_State *L = luahost_state(candidate);
    char perr[1024];
    int rc = call_plan(r, candidate, cfg, in, &ri, -1, perr, sizeof perr);
    if (rc < 0) {
        char *why = xstrdup(perr); /* a rule's error can quote what it was given */
        safety_scrub(ri.secrets, &why);
        util_seterr(err, errlen, "plan over the current accounts failed: %s", why);
        free(why);
    } else {
        /* Renders and checks every object as `run` would: an object the core
         * would refuse for a live account refuses the rules. */
        plan_result scratch = {0};
        read_actions(L, cfg, in, &ri, rules_version(r), &scratch);
        for (size_t i = 0; i < scratch.n && scratch.refused > 0; i++) {
            if (scratch.actions[i].kind != ACT_ERROR)
                continue;
            safety_scrub(ri.secrets, &scratch.actions[i].reason);
            util_seterr(err, errlen, "plan over the current accounts: account \"%s\": %s",
                        scratch.actions[i].account_id ? scratch.actions[i].account_id : "?",
                        scratch.actions[i].reason);
            rc = -1;
            break;
        }
        rec_plan_free(&scratch);
        lua_gc(L, LUA_GCCOLLECT);
    }
    scrub_set_free(ri.secrets);
    free(ri.skip);
    strmap_free(&ri.by_id);
    return rc;
}
