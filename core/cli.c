/* cli: `plan` and `status`, and the view of the database, the cluster and
 * the rules that they and the REPL read through. See cli.h.
 *
 * Nothing here writes: the database is only SELECTed from (the accounts and
 * the schema check), the API server only receives GETs (the paginated list
 * of the managed Deployments and their Pods). */
#include "cli.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "kube.h"
#include "log.h"
#include "luahost.h"
#include "migrate.h"
#include "pg.h"
#include "reconcile.h"
#include "rollout.h"
#include "rules_check.h"
#include "worker_state.h"
#include "yamlout.h"
#include "wstatus.h"

#define BOOLOID 16

struct cli_view {
    const config *cfg;
    pg_conn *db;
    kube_config kcfg;
    kube_client *kube;
    rules *rules;
};

void cli_quiet_logs(const config *cfg)
{
    if (cfg->log_level > LOG_DEBUG && cfg->log_level < LOG_WARN)
        log_init(LOG_WARN, cfg->log_format);
}

cli_view *cli_view_new(const config *cfg)
{
    cli_view *v = xcalloc(1, sizeof *v);
    v->cfg = cfg;
    return v;
}

void cli_view_free(cli_view *v)
{
    if (v == NULL)
        return;
    pg_close(v->db);
    kube_client_free(v->kube);
    kube_config_free(&v->kcfg);
    rules_free(v->rules);
    free(v);
}

static int read_live(cli_view *v, strmap *observed, PGresult **accounts, char *err, size_t errlen);

/* Like run's reload check: candidate rules must plan over the live
 * accounts (a sample as large as run's) before they take effect. With no
 * database or cluster to read, the self-check is the gate, as in run. */
static int check_live(cli_view *v, luahost *candidate, char *err, size_t errlen)
{
    strmap observed = STRMAP_INIT;
    PGresult *accounts = NULL;
    char lerr[512];
    if (read_live(v, &observed, &accounts, lerr, sizeof lerr) < 0)
        return 0;
    acct_rows rows;
    rows_from_pgresult(&rows, accounts);
    plan_input in = {.accounts = &rows, .observed = &observed, .full = 1, .active_total = -1,
                     .delete_allowance = 0, .settled = NULL, .max_rows = REC_PLAN_CHUNK};
    int rc = rec_check_plan(v->rules, candidate, v->cfg, &in, err, errlen);
    rows_free(&rows);
    PQclear(accounts);
    cache_free_deployments(&observed);
    return rc;
}

/* Loads cfg->rules_dir into v->rules (with check_live when live). The
 * candidate is checked first, so that a rejected directory is reported by
 * the caller, once, rather than also logged by rules_reload (which keeps
 * the old rules either way). */
static int load_rules(cli_view *v, int live, char *err, size_t errlen)
{
    char lerr[1024];
    luahost *trial = rules_load_checked(v->cfg, v->cfg->rules_dir, lerr, sizeof lerr);
    if (trial != NULL && live && check_live(v, trial, lerr, sizeof lerr) < 0) {
        luahost_free(trial);
        trial = NULL;
    }
    if (trial != NULL) {
        luahost_free(trial);
        if (rules_reload(v->rules, NULL, lerr, sizeof lerr) == 0)
            return 0;
    }
    util_seterr(err, errlen, "rules in %s: %s", v->cfg->rules_dir, lerr);
    return -1;
}

rules *cli_view_rules(cli_view *v, char *err, size_t errlen)
{
    if (v->rules == NULL)
        v->rules = rules_new(v->cfg);
    if (rules_host(v->rules) == NULL && load_rules(v, 0, err, errlen) < 0)
        return NULL;
    return v->rules;
}

int cli_view_reload(cli_view *v, char *err, size_t errlen)
{
    if (v->rules == NULL)
        v->rules = rules_new(v->cfg);
    return load_rules(v, 1, err, errlen);
}

static int view_db(cli_view *v, char *err, size_t errlen)
{
    char lerr[512];
    if (v->db != NULL) {
        if (pg_ok(v->db))
            return 0;
        if (pg_reconnect(v->db, lerr, sizeof lerr) == 0)
            return 0;
        util_seterr(err, errlen, "database: %s", lerr);
        return -1;
    }
    if (config_require_database(v->cfg, lerr, sizeof lerr) < 0 ||
        (v->db = pg_connect(v->cfg->database_url, v->cfg->db_timeout_ms, lerr, sizeof lerr)) == NULL) {
        util_seterr(err, errlen, "database: %s", lerr);
        return -1;
    }
    return 0;
}

static int view_kube(cli_view *v, char *err, size_t errlen)
{
    if (v->kube != NULL)
        return 0;
    char lerr[512];
    kube_config_free(&v->kcfg);
    int rc = kube_config_resolve(v->cfg->kubeconfig, v->cfg->kube_context, &v->kcfg, lerr, sizeof lerr);
    if (rc == 0)
        v->kube = kube_client_new(&v->kcfg, lerr, sizeof lerr);
    if (v->kube == NULL) {
        util_seterr(err, errlen, "kubernetes: %s", lerr);
        return -1;
    }
    return 0;
}

/* The account rows `run` reads (rec_accounts_sql), optionally by account_id. */
static PGresult *read_accounts(cli_view *v, int sorted, char *err, size_t errlen)
{
    char *sql = rec_accounts_sql(v->cfg, 0);
    if (sorted) {
        char *by_id = xasprintf("SELECT * FROM (%s) accounts ORDER BY account_id", sql);
        free(sql);
        sql = by_id;
    }
    char lerr[512];
    PGresult *res = pg_exec(v->db, sql, 0, NULL, lerr, sizeof lerr);
    free(sql);
    if (res == NULL)
        util_seterr(err, errlen, "reading the accounts from %s: %s", v->cfg->accounts_table, lerr);
    return res;
}

static int list_managed(cli_view *v, enum cache_kind kind, strmap *out, char *err, size_t errlen)
{
    char lerr[512];
    if (cache_list_blocking(v->kube, v->cfg->namespace, kind, v->cfg->kube_timeout_ms, out, lerr,
                            sizeof lerr) == 0)
        return 0;
    util_seterr(err, errlen, "listing the managed %s in namespace %s: %s",
                kind == CACHE_DEPLOYMENT ? "Deployments" : "Pods", v->cfg->namespace, lerr);
    return -1;
}

/* The input of a full pass: the managed Deployments and every account. */
static int read_live(cli_view *v, strmap *observed, PGresult **accounts, char *err, size_t errlen)
{
    if (view_db(v, err, errlen) < 0 || view_kube(v, err, errlen) < 0 ||
        list_managed(v, CACHE_DEPLOYMENT, observed, err, errlen) < 0)
        return -1;
    if ((*accounts = read_accounts(v, 0, err, errlen)) == NULL) {
        cache_free_deployments(observed);
        return -1;
    }
    return 0;
}

/* ---- output helpers --------------------------------------------------------- */

/* A text table: rows of owned cells, printed with columns aligned. */
typedef struct table {
    size_t ncols, nrows;
    char **cells;
} table;

static void table_row(table *t, const char *const *row)
{
    t->cells = xrealloc(t->cells, (t->nrows + 1) * t->ncols * sizeof *t->cells);
    for (size_t c = 0; c < t->ncols; c++)
        t->cells[t->nrows * t->ncols + c] = xstrdup(row[c] ? row[c] : "-");
    t->nrows++;
}

static void table_print(FILE *f, const table *t)
{
    size_t *width = xcalloc(t->ncols, sizeof *width);
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t n = strlen(t->cells[r * t->ncols + c]);
            if (n > width[c])
                width[c] = n;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            if (c + 1 == t->ncols)
                fprintf(f, "%s\n", cell);
            else
                fprintf(f, "%-*s  ", (int)width[c], cell);
        }
    }
    free(width);
}

static void table_free(table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

/* ---- plan --------------------------------------------------------------------- */

typedef struct plan_counts {
    int by_kind[ACT_ERROR + 1];
    int pending;
} plan_counts;

static plan_counts count_actions(const plan_result *p)
{
    plan_counts c;
    memset(&c, 0, sizeof c);
    for (size_t i = 0; i < p->n; i++)
        c.by_kind[p->actions[i].kind]++;
    c.pending = c.by_kind[ACT_CREATE] + c.by_kind[ACT_UPDATE] + c.by_kind[ACT_DELETE] > 0;
    return c;
}

/* One full planning pass as `run` makes it, into out (rec_plan_free it). */
static int make_plan(cli_view *v, plan_result *out, char *err, size_t errlen)
{
    const config *cfg = v->cfg;
    memset(out, 0, sizeof *out);
    rules *r = cli_view_rules(v, err, errlen);
    if (r == NULL || view_db(v, err, errlen) < 0)
        return -1;
    /* `run` plans nothing until the schema is at head: neither do we. */
    char lerr[512] = "";
    int at_head = migrate_at_head(v->db, cfg, lerr, sizeof lerr);
    if (at_head != 1) {
        util_seterr(err, errlen, at_head < 0 ? "database: %s"
                                             : "the database schema is not at head (%s): `run` waits for "
                                               "`sync-airbnb-operator migrate up` and would do nothing yet",
                    lerr);
        return -1;
    }
    strmap observed = STRMAP_INIT;
    PGresult *accounts = NULL;
    if (read_live(v, &observed, &accounts, err, errlen) < 0)
        return -1;
    /* Every account, with the whole delete budget (run's bucket holds at
     * most DELETE_BUDGET, so this is the most it could delete now), handed
     * to the rules in the chunks run hands them over in, over several passes. */
    acct_rows rows;
    rows_from_pgresult(&rows, accounts);
    plan_input in = {.accounts = &rows, .observed = &observed, .full = 1, .active_total = -1,
                     .delete_allowance = cfg->delete_budget, .settled = NULL, .max_rows = REC_PLAN_CHUNK};
    int rc = rec_plan_all(r, cfg, &in, out, err, errlen);
    out->paused = (int)wstate_count_paused(&observed);
    if (rc == 0) /* workers a rollout has not reached: planned as `run` plans them */
        rollout_plan_filter(cfg, v->db, r, &observed, out);
    rows_free(&rows);
    PQclear(accounts);
    cache_free_deployments(&observed);
    return rc;
}

static void plan_write_json(buf *b, const plan_result *p, const plan_counts *c, const char *version,
                            const config *cfg)
{
    json_out o;
    jo_init(&o, b);
    jo_object(&o);
    jo_kstr(&o, "rules_version", version);
    jo_kstr(&o, "namespace", cfg->namespace);
    jo_kbool(&o, "pending", c->pending);
    jo_key(&o, "summary");
    jo_object(&o);
    for (int k = ACT_CREATE; k <= ACT_ERROR; k++)
        jo_kint(&o, rec_action_name((act_kind)k), c->by_kind[k]);
    jo_kint(&o, "desired", p->desired);
    jo_kint(&o, "observed", p->observed);
    jo_kint(&o, "paused", p->paused);
    jo_end(&o);
    jo_kstr(&o, "hold_reason", p->hold_reason);
    jo_key(&o, "actions");
    jo_array(&o);
    for (size_t i = 0; i < p->n; i++) {
        const action *a = &p->actions[i];
        jo_object(&o);
        jo_kstr(&o, "action", rec_action_name(a->kind));
        jo_kstr(&o, "account_id", a->account_id);
        jo_kstr(&o, "deployment", a->name);
        jo_kstr(&o, "reason", a->reason);
        if (a->paused)
            jo_kbool(&o, "paused", 1);
        if (a->body) { /* the object as it would be applied (JSON already: safety.c made it) */
            jo_kstr(&o, "desired_hash", a->desired_hash);
            jo_key(&o, "object");
            jo_raw(&o, a->body);
        }
        jo_end(&o);
    }
    jo_end(&o);
    jo_end(&o);
}

int cli_plan_json(cli_view *v, buf *out, int *pending, char *err, size_t errlen)
{
    plan_result p;
    if (make_plan(v, &p, err, errlen) < 0)
        return -1;
    plan_counts c = count_actions(&p);
    plan_write_json(out, &p, &c, rules_version(v->rules), v->cfg);
    if (pending)
        *pending = c.pending;
    rec_plan_free(&p);
    return 0;
}

static void plan_print_table(const plan_result *p, const plan_counts *c, const char *version)
{
    if (p->n > 0) {
        table t = {.ncols = 4};
        table_row(&t, (const char *[]){"ACTION", "ACCOUNT", "DEPLOYMENT", "REASON"});
        for (size_t i = 0; i < p->n; i++) {
            const action *a = &p->actions[i];
            table_row(&t, (const char *[]){rec_action_name(a->kind), a->account_id, a->name, a->reason});
        }
        table_print(stdout, &t);
        table_free(&t);
        printf("\n");
    }
    if (c->pending)
        printf("changes pending: %d to create, %d to update, %d to delete",
               c->by_kind[ACT_CREATE], c->by_kind[ACT_UPDATE], c->by_kind[ACT_DELETE]);
    else
        printf("nothing to do");
    if (c->by_kind[ACT_HOLD] || c->by_kind[ACT_ERROR])
        printf("; %d held, %d errors (listed, not pending: `run` cannot execute them)", c->by_kind[ACT_HOLD],
               c->by_kind[ACT_ERROR]);
    printf("; %d active accounts, %d managed Deployments", p->desired, p->observed);
    if (p->paused)
        printf(" (%d paused: " PAUSED_ANNOTATION ")", p->paused);
    printf("; rules %.12s\n", version);
}

int plan_main(const config *cfg, int argc, char **argv)
{
    if (argc > 0) {
        /* not 2: that exit code means "changes pending" */
        fprintf(stderr, "plan: unexpected argument \"%s\" (see plan --help)\n", argv[0]);
        return CLI_PLAN_ERROR;
    }
    cli_quiet_logs(cfg);
    cli_view *v = cli_view_new(cfg);
    char err[1024];
    plan_result p;
    int rc = CLI_PLAN_ERROR;
    if (make_plan(v, &p, err, sizeof err) < 0) {
        fprintf(stderr, "plan: %s\n", err);
        goto out;
    }
    plan_counts c = count_actions(&p);
    if (cfg->output_json) {
        buf b = {0};
        plan_write_json(&b, &p, &c, rules_version(v->rules), cfg);
        yamlout_print(stdout, b.data, cfg->output_yaml);
        buf_free(&b);
    } else {
        plan_print_table(&p, &c, rules_version(v->rules));
    }
    rec_plan_free(&p);
    rc = c.pending ? CLI_PLAN_PENDING : CLI_PLAN_NOTHING;
out:
    cli_view_free(v);
    return rc;
}

/* ---- status --------------------------------------------------------------------- */

/* The Pods of one worker Deployment (by their app.kubernetes.io/instance label). */
typedef struct pod_sum {
    int ready, restarts;
    const char *waiting_reason; /* borrowed from the pod map */
    wstatus_pods w;             /* the same sum as run's worker_status rows */
} pod_sum;

typedef struct acct_row {
    int row;                 /* in the accounts result; -1 for a Deployment without an account */
    const obs_deploy *d;     /* NULL: no Deployment */
    int in_sync;             /* 1 yes, 0 no, -1 unknown */
    char expected[65];       /* the fingerprint of the account's credentials; "" unknown */
} acct_row;

typedef struct status_view {
    PGresult *accounts;
    strmap deployments, pods, sums; /* sums: Deployment name → pod_sum */
    acct_row *rows;                 /* accounts first, then the orphans */
    size_t naccounts, nrows;
    const char *rules_version;
    PGresult *operator_rows; /* what only run knows (holds, its errors...): worker_status; NULL unreadable */
    strmap op_by_account;    /* account id → row in operator_rows (+1) */
} status_view;

static const char *col(const status_view *s, int row, const char *name)
{
    int c = PQfnumber(s->accounts, name);
    if (c < 0 || PQgetisnull(s->accounts, row, c))
        return NULL;
    return PQgetvalue(s->accounts, row, c);
}

static int flag(const status_view *s, int row, const char *name)
{
    const char *v = col(s, row, name);
    return v && v[0] == 't';
}

/* Pushes rules[fn]; 0, or -1 (nothing pushed) when it is not a function. */
static int push_rule(rules *r, const char *fn)
{
    luahost *h = rules_host(r);
    luahost_push_entry_field(h, fn);
    if (lua_isfunction(luahost_state(h), -1))
        return 0;
    lua_pop(luahost_state(h), 1);
    return -1;
}

/* Calls the rule pushed by push_rule with the nargs values above it; leaves
 * one result. Returns 0, or -1 when it raised (logged at debug). */
static int call_rule(rules *r, const config *cfg, const char *fn, int nargs)
{
    char err[512];
    if (luahost_call(rules_host(r), nargs, 1, cfg->rules_budget_ms, err, sizeof err) == 0)
        return 0;
    log_debug("status: rule failed", "function", fn, "error", err, NULL);
    return -1;
}

/* rules.worker_name(id) into out. */
static int worker_name(rules *r, const config *cfg, const char *id, char *out, size_t outlen)
{
    lua_State *L = luahost_state(rules_host(r));
    if (push_rule(r, "worker_name") < 0)
        return -1;
    lua_pushstring(L, id);
    if (call_rule(r, cfg, "worker_name", 1) < 0)
        return -1;
    int ok = lua_type(L, -1) == LUA_TSTRING;
    if (ok)
        snprintf(out, outlen, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return ok ? 0 : -1;
}

/* The fingerprint of the account's current credentials into a->expected,
 * and whether the running pods are in sync: rules.credentials_in_sync(
 * account, observed) when the rules have it (after the worker's own cookie
 * rotation the running fingerprint is kept on purpose), else a plain
 * comparison of the live pod template annotation with expected. */
static void fingerprint_state(rules *r, const config *cfg, const PGresult *res, int row, acct_row *a)
{
    lua_State *L = luahost_state(rules_host(r));
    acct_rows rows;
    rows_from_pgresult(&rows, res);
    if (push_rule(r, "credentials_fingerprint") == 0) {
        rec_push_account(L, &rows, row);
        if (call_rule(r, cfg, "credentials_fingerprint", 1) == 0) {
            if (lua_type(L, -1) == LUA_TSTRING)
                snprintf(a->expected, sizeof a->expected, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    if (a->d->fingerprint == NULL) {
        rows_free(&rows);
        return;
    }
    if (push_rule(r, "credentials_in_sync") == 0) {
        rec_push_account(L, &rows, row);
        rec_push_observed(L, a->d);
        if (call_rule(r, cfg, "credentials_in_sync", 2) == 0) {
            if (lua_type(L, -1) == LUA_TBOOLEAN)
                a->in_sync = lua_toboolean(L, -1);
            lua_pop(L, 1);
        }
    } else if (a->expected[0]) {
        a->in_sync = strcmp(a->expected, a->d->fingerprint) == 0;
    }
    rows_free(&rows);
}

static void sum_pods(status_view *s)
{
    size_t it = 0;
    void *v;
    while (strmap_next(&s->pods, &it, NULL, &v)) {
        const obs_pod *p = v;
        if (p->instance == NULL)
            continue;
        pod_sum *sum = strmap_get(&s->sums, p->instance);
        if (sum == NULL) {
            sum = xcalloc(1, sizeof *sum);
            strmap_put(&s->sums, p->instance, sum);
        }
        sum->ready += p->ready;
        sum->restarts += p->restarts;
        if (sum->waiting_reason == NULL)
            sum->waiting_reason = p->waiting_reason;
        wstatus_pods_add(&sum->w, p);
    }
}

/* Matches every account with its Deployment (by the account-id annotation,
 * else by the rules' worker_name for a Deployment without one) and lists
 * the managed Deployments no account claims. r may be NULL (rules that do
 * not load): annotations only, fingerprints unknown. */
static void match_rows(status_view *s, rules *r, const config *cfg)
{
    strmap by_account = STRMAP_INIT, claimed = STRMAP_INIT;
    size_t it = 0;
    void *v;
    while (strmap_next(&s->deployments, &it, NULL, &v)) {
        const obs_deploy *d = v;
        if (d->managed && d->account_id)
            strmap_put(&by_account, d->account_id, v);
    }
    int n = PQntuples(s->accounts);
    s->rows = xcalloc((size_t)n + s->deployments.len + 1, sizeof *s->rows);
    for (int i = 0; i < n; i++) {
        acct_row *a = &s->rows[s->nrows++];
        a->row = i;
        a->in_sync = -1;
        const char *id = col(s, i, "account_id");
        const obs_deploy *d = id ? strmap_get(&by_account, id) : NULL;
        char name[256];
        if (d == NULL && id && r && worker_name(r, cfg, id, name, sizeof name) == 0) {
            d = strmap_get(&s->deployments, name);
            if (d && (!d->managed || d->account_id))
                d = NULL;
        }
        if (d == NULL || strmap_get(&claimed, d->name))
            continue;
        a->d = d;
        strmap_put(&claimed, d->name, (void *)1);
        if (r)
            fingerprint_state(r, cfg, s->accounts, i, a);
    }
    s->naccounts = s->nrows;
    it = 0;
    while (strmap_next(&s->deployments, &it, NULL, &v)) {
        const obs_deploy *d = v;
        if (!d->managed || strmap_get(&claimed, d->name))
            continue;
        acct_row *a = &s->rows[s->nrows++];
        a->row = -1;
        a->d = d;
        a->in_sync = -1;
    }
    strmap_free(&by_account);
    strmap_free(&claimed);
}

static void status_free(status_view *s)
{
    if (s->accounts)
        PQclear(s->accounts);
    cache_free_deployments(&s->deployments);
    cache_free_pods(&s->pods);
    size_t it = 0;
    void *v;
    while (strmap_next(&s->sums, &it, NULL, &v))
        free(v);
    strmap_free(&s->sums);
    if (s->operator_rows)
        PQclear(s->operator_rows);
    strmap_free(&s->op_by_account);
    free(s->rows);
    memset(s, 0, sizeof *s);
}

/* The facts only the running operator knows (a held delete, a pause, a
 * rollout wave, its own failed write), from the rows it writes. Without the
 * table (not migrated, no privilege) status shows what it sees itself. */
static void read_operator_rows(cli_view *v, status_view *s)
{
    char err[512];
    s->operator_rows = pg_exec(v->db, "SELECT account_id, reason, last_error FROM " WSTATUS_TABLE
                                      " WHERE reason IN ('paused', 'held', 'rollout', 'failing')",
                               0, NULL, err, sizeof err);
    if (s->operator_rows == NULL) {
        log_debug("status: worker_status not read", "error", err, NULL);
        return;
    }
    for (int i = 0; i < PQntuples(s->operator_rows); i++)
        strmap_put(&s->op_by_account, PQgetvalue(s->operator_rows, i, 0), (void *)(intptr_t)(i + 1));
}

static const pod_sum *row_pods(const status_view *s, const acct_row *a);

/* The row's reason, by the one derivation run's worker_status rows use. */
static enum wstatus_reason row_reason(const status_view *s, const acct_row *a, const char **failure)
{
    const char *id = a->row >= 0 ? col(s, a->row, "account_id") : a->d->account_id;
    intptr_t op = id ? (intptr_t)strmap_get(&s->op_by_account, id) : 0;
    const char *op_reason = op ? PQgetvalue(s->operator_rows, (int)op - 1, 1) : "";
    int deleted = a->row >= 0 && col(s, a->row, "deleted_at") != NULL;
    wstatus_input in = {
        .account_exists = a->row >= 0,
        .active = a->row >= 0 && flag(s, a->row, "is_active"),
        .deleted = deleted,
        .paused = strcmp(op_reason, "paused") == 0,
        .held = strcmp(op_reason, "held") == 0,
        .rollout = strcmp(op_reason, "rollout") == 0,
        .error = strcmp(op_reason, "failing") == 0 && !PQgetisnull(s->operator_rows, (int)op - 1, 2)
                     ? PQgetvalue(s->operator_rows, (int)op - 1, 2) : NULL,
        .d = a->d,
        .pods = a->d ? &row_pods(s, a)->w : NULL,
    };
    return wstatus_derive(&in, failure);
}

static int make_status(cli_view *v, status_view *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    if (view_db(v, err, errlen) < 0 || view_kube(v, err, errlen) < 0)
        return -1;
    /* Rules that do not load (run keeps serving its last good ones) cost
     * only the fingerprint column: status is what one looks at then. */
    char rerr[1024];
    rules *r = cli_view_rules(v, rerr, sizeof rerr);
    if (r == NULL)
        fprintf(stderr, "status: %s; fingerprints unknown\n", rerr);
    if (list_managed(v, CACHE_DEPLOYMENT, &s->deployments, err, errlen) < 0 ||
        list_managed(v, CACHE_POD, &s->pods, err, errlen) < 0 ||
        (s->accounts = read_accounts(v, 1, err, errlen)) == NULL) {
        status_free(s);
        return -1;
    }
    sum_pods(s);
    match_rows(s, r, v->cfg);
    read_operator_rows(v, s);
    s->rules_version = r ? rules_version(r) : NULL;
    return 0;
}

static const pod_sum *row_pods(const status_view *s, const acct_row *a)
{
    static const pod_sum none = {0};
    const pod_sum *sum = a->d ? strmap_get(&s->sums, a->d->name) : NULL;
    return sum ? sum : &none;
}

static void status_write_row(json_out *o, const status_view *s, const acct_row *a)
{
    const pod_sum *pods = row_pods(s, a);
    jo_object(o);
    if (a->row >= 0) {
        int deleted = col(s, a->row, "deleted_at") != NULL;
        jo_kstr(o, "account_id", col(s, a->row, "account_id"));
        jo_kbool(o, "active", flag(s, a->row, "is_active") && !deleted);
        jo_kbool(o, "deleted", deleted);
        jo_kstr(o, "deployment", a->d ? a->d->name : NULL);
    } else {
        jo_kstr(o, "deployment", a->d->name);
        jo_kstr(o, "account_id", a->d->account_id); /* the annotation, if any */
    }
    jo_kbool(o, "paused", wstate_paused(a->d));
    static const char *const state[][2] = {{"last_action", LAST_ACTION_ANNOTATION},
                                            {"last_action_reason", LAST_REASON_ANNOTATION},
                                            {"last_action_at", LAST_AT_ANNOTATION},
                                            {"rules_version_applied", RULES_VERSION_ANNOTATION}};
    for (size_t i = 0; i < sizeof state / sizeof state[0]; i++)
        jo_kstr(o, state[i][0], wstate_annotation(a->d, state[i][1]));
    jo_kint(o, "ready_pods", pods->ready);
    jo_kint(o, "replicas", a->d ? a->d->replicas : 0);
    jo_kint(o, "restarts", pods->restarts);
    jo_kstr(o, "waiting_reason", pods->waiting_reason);
    const char *failure;
    enum wstatus_reason reason = row_reason(s, a, &failure);
    jo_kstr(o, "reason", wstatus_reason_name(reason));
    jo_kstr(o, "pod_phase", a->d ? pods->w.phase : NULL);
    jo_kstr(o, "last_error", failure);
    if (a->row >= 0) {
        jo_key(o, "fingerprint_in_sync");
        if (a->in_sync < 0)
            jo_null(o);
        else
            jo_bool(o, a->in_sync);
        jo_kstr(o, "fingerprint", a->d ? a->d->fingerprint : NULL);
        jo_kstr(o, "account_fingerprint", a->expected[0] ? a->expected : NULL);
        jo_kstr(o, "last_sync_at", col(s, a->row, "last_sync_at"));
    }
    jo_end(o);
}

static void status_write_json(buf *b, const status_view *s, const config *cfg)
{
    json_out o;
    jo_init(&o, b);
    jo_object(&o);
    jo_kstr(&o, "namespace", cfg->namespace);
    jo_kstr(&o, "rules_version", s->rules_version);
    jo_key(&o, "accounts");
    jo_array(&o);
    for (size_t i = 0; i < s->naccounts; i++)
        status_write_row(&o, s, &s->rows[i]);
    jo_end(&o);
    jo_key(&o, "deployments_without_account");
    jo_array(&o);
    for (size_t i = s->naccounts; i < s->nrows; i++)
        status_write_row(&o, s, &s->rows[i]);
    jo_end(&o);
    jo_end(&o);
}

int cli_status_json(cli_view *v, buf *out, char *err, size_t errlen)
{
    status_view s;
    if (make_status(v, &s, err, errlen) < 0)
        return -1;
    status_write_json(out, &s, v->cfg);
    status_free(&s);
    return 0;
}

/* READY and RESTARTS cells of a row. */
static void pod_cells(const status_view *s, const acct_row *a, char *ready, size_t rlen, char *restarts,
                      size_t slen)
{
    const pod_sum *pods = row_pods(s, a);
    snprintf(ready, rlen, "%d/%d", pods->ready, a->d->replicas);
    if (pods->waiting_reason)
        snprintf(restarts, slen, "%d (%s)", pods->restarts, pods->waiting_reason);
    else
        snprintf(restarts, slen, "%d", pods->restarts);
}

static void status_print_table(const status_view *s)
{
    table t = {.ncols = 8};
    table_row(&t, (const char *[]){"ACCOUNT", "ACTIVE", "DEPLOYMENT", "READY", "RESTARTS", "FINGERPRINT",
                                   "REASON", "LAST_SYNC_AT"});
    int active = 0, ready = 0, workers = 0, paused = 0;
    char named[128];
    for (size_t i = 0; i < s->naccounts; i++) {
        const acct_row *a = &s->rows[i];
        int deleted = col(s, a->row, "deleted_at") != NULL;
        int is_active = flag(s, a->row, "is_active") && !deleted;
        active += is_active;
        char rd[32] = "-", rs[96] = "-";
        if (a->d) {
            workers++;
            pod_cells(s, a, rd, sizeof rd, rs, sizeof rs);
            ready += row_pods(s, a)->ready > 0;
        }
        const char *last = col(s, a->row, "last_sync_at"), *failure;
        const char *reason = wstatus_reason_name(row_reason(s, a, &failure));
        paused += wstate_paused(a->d);
        snprintf(named, sizeof named, "%s%s", a->d ? a->d->name : "-", wstate_paused(a->d) ? " (paused)" : "");
        table_row(&t, (const char *[]){col(s, a->row, "account_id"), deleted ? "deleted" : is_active ? "yes" : "no",
                                       named, rd, rs,
                                       !a->d ? "-" : a->in_sync < 0 ? "?" : a->in_sync ? "yes" : "no",
                                       reason ? reason : "-", last ? last : "never"});
    }
    table_print(stdout, &t);
    table_free(&t);
    if (s->nrows > s->naccounts) {
        printf("\nManaged Deployments without an account (`run` deletes them, within DELETE_BUDGET):\n");
        t.ncols = 4;
        table_row(&t, (const char *[]){"DEPLOYMENT", "ACCOUNT_ANNOTATION", "READY", "RESTARTS"});
        for (size_t i = s->naccounts; i < s->nrows; i++) {
            const acct_row *a = &s->rows[i];
            char rd[32], rs[96];
            pod_cells(s, a, rd, sizeof rd, rs, sizeof rs);
            paused += wstate_paused(a->d);
            snprintf(named, sizeof named, "%s%s", a->d->name, wstate_paused(a->d) ? " (paused: kept)" : "");
            table_row(&t, (const char *[]){named, a->d->account_id, rd, rs});
        }
        table_print(stdout, &t);
        table_free(&t);
    }
    printf("\n%zu accounts (%d active), %d with a worker (%d ready), %zu managed Deployments without an "
           "account; rules %.12s\n",
           s->naccounts, active, workers, ready, s->nrows - s->naccounts,
           s->rules_version ? s->rules_version : "(not loaded)");
    if (paused)
        printf("%d paused (" PAUSED_ANNOTATION "=true): the operator leaves them alone\n", paused);
}

int status_main(const config *cfg, int argc, char **argv)
{
    if (argc > 0) {
        fprintf(stderr, "status: unexpected argument \"%s\" (see status --help)\n", argv[0]);
        return 2;
    }
    cli_quiet_logs(cfg);
    cli_view *v = cli_view_new(cfg);
    char err[1024];
    status_view s;
    int rc = 1;
    if (make_status(v, &s, err, sizeof err) < 0) {
        fprintf(stderr, "status: %s\n", err);
        goto out;
    }
    if (cfg->output_json) {
        buf b = {0};
        status_write_json(&b, &s, cfg);
        yamlout_print(stdout, b.data, cfg->output_yaml);
        buf_free(&b);
    } else {
        status_print_table(&s);
        rollout_print_summary(cfg, v->db, stdout);
    }
    status_free(&s);
    rc = 0;
out:
    cli_view_free(v);
    return rc;
}
