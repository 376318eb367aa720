/* rollout: see rollout.h; how its files divide the work: rollout_int.h. */
#include "rollout_int.h"

#include <lauxlib.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "luahost.h"
#include "metrics.h"

#define REREAD_MS 2000 /* while a rollout is under way: a person's resume/abort */
#define SEARCH_BUDGET_MS 15 /* per turn of the event loop, finding who a rollout changes */

rollout *rollout_new(const config *cfg, rollout_report_fn report, void *ud)
{
    rollout *ro = xcalloc(1, sizeof *ro);
    ro->cfg = cfg;
    ro->report = report;
    ro->ud = ud;
    ro->by_name = (strmap)STRMAP_BORROWED;
    ro->pol = ROLLOUT_POLICY_DEFAULT;
    snprintf(ro->phase, sizeof ro->phase, "complete");
    return ro;
}

void rollout_free(rollout *ro)
{
    if (ro == NULL)
        return;
    rollout_state_clear(ro);
    free(ro);
}

void rollout_invalidate(rollout *ro)
{
    ro->loaded = 0;
}

void rollout_foreach_member(const rollout *ro, void (*fn)(const char *account_id, int waiting, void *ud), void *ud)
{
    if (ro == NULL || !ro->loaded)
        return;
    int done = rollout_phase_is(ro, "complete"), aborted = rollout_phase_is(ro, "aborted");
    for (size_t i = 0; i < ro->nmembers; i++)
        if (ro->members[i].account_id)
            fn(ro->members[i].account_id, !done && (aborted || (int)i >= ro->reached), ud);
}

int rollout_ready(const rollout *ro, rules *current)
{
    if (!ro->loaded || !ro->has_row)
        return 0;
    return strcmp(ro->to_version, rules_version(current)) == 0 &&
           strcmp(ro->to_image, ro->cfg->worker_image) == 0;
}

void rollout_declare_metrics(void)
{
    metrics_declare("sync_airbnb_operator_rollout_phase", METRICS_GAUGE,
                    "1 for the phase the rules rollout is in (complete, progressing, halted, aborted).");
    metrics_declare("sync_airbnb_operator_rollout_workers", METRICS_GAUGE,
                    "Workers the rollout changes (changed) and has reached so far (reached).");
    metrics_declare("sync_airbnb_operator_rollout_wave", METRICS_GAUGE, "Current wave of the rollout (1 = canary; 0: none).");
    metrics_declare("sync_airbnb_operator_rollout_halts_total", METRICS_COUNTER, "Rollouts halted by a failing wave.");
}

void rollout_publish_metrics(const rollout *ro)
{
    if (ro->report == NULL) /* `plan`: no metrics */
        return;
    static const char *const phases[] = {"complete", "progressing", "halted", "aborted"};
    for (size_t i = 0; i < 4; i++) {
        char labels[48];
        snprintf(labels, sizeof labels, "phase=\"%s\"", phases[i]);
        metrics_set("sync_airbnb_operator_rollout_phase", labels, rollout_phase_is(ro, phases[i]));
    }
    metrics_set("sync_airbnb_operator_rollout_workers", "state=\"changed\"", (double)ro->nmembers);
    metrics_set("sync_airbnb_operator_rollout_workers", "state=\"reached\"", ro->reached);
    metrics_set("sync_airbnb_operator_rollout_wave", NULL, ro->nwaves ? ro->wave + 1 : 0);
}

/* ---- the rules' policy ---------------------------------------------------- */

/* t[k] of a table the rules returned, without metamethods. */
static int raw_int(lua_State *L, int idx, const char *k, int lo, int hi, int *out)
{
    lua_pushstring(L, k);
    lua_rawget(L, idx);
    int ok = lua_isinteger(L, -1) && lua_tointeger(L, -1) >= lo && lua_tointeger(L, -1) <= hi;
    if (ok)
        *out = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return ok;
}

/* The policy of rules r (checked by their self_check; read again here
 * because what rules hand over is untrusted). The default stays on any
 * doubt. */
rollout_policy rollout_read_policy(rules *r)
{
    rollout_policy p = ROLLOUT_POLICY_DEFAULT;
    luahost *h = rules_host(r);
    if (h == NULL)
        return p;
    lua_State *L = luahost_state(h);
    int top = lua_gettop(L);
    luahost_push_entry_field(h, "rollout_policy");
    int t = lua_gettop(L);
    if (lua_type(L, t) == LUA_TTABLE && !luahost_metatable_unsafe(L, t) && lua_getmetatable(L, t) == 0) {
        rollout_policy q = p;
        int ok = raw_int(L, t, "soak_seconds", 0, 86400, &q.soak_s) &&
                 raw_int(L, t, "ready_timeout_seconds", 1, 86400, &q.ready_timeout_s) &&
                 raw_int(L, t, "max_restarts", 0, 1000, &q.max_restarts);
        lua_pushstring(L, "waiting_seconds"); /* optional (rules older than it) */
        int absent = lua_rawget(L, t) == LUA_TNIL;
        lua_pop(L, 1);
        ok = ok && (absent || raw_int(L, t, "waiting_seconds", 0, 86400, &q.waiting_s));
        lua_pushstring(L, "rollback");
        lua_rawget(L, t);
        ok = ok && lua_type(L, -1) == LUA_TBOOLEAN;
        q.rollback = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (ok)
            p = q;
        else
            log_warn("rollout policy unreadable; using the defaults", NULL);
    }
    lua_settop(L, top);
    return p;
}

/* Wave sizes from the rules' rollout_waves(total). Falls back to one worker
 * per wave (the slowest, safest order) when the rules' answer is unusable. */
void rollout_read_waves(rollout *ro, rules *r, int total)
{
    free(ro->waves);
    ro->waves = NULL;
    ro->nwaves = 0;
    luahost *h = rules_host(r);
    char err[512] = "";
    int ok = 0;
    if (h) {
        lua_State *L = luahost_state(h);
        int top = lua_gettop(L);
        luahost_push_entry_field(h, "rollout_waves");
        lua_pushinteger(L, total);
        if (luahost_call(h, 1, 1, ro->cfg->rules_budget_ms, err, sizeof err) == 0 &&
            lua_type(L, -1) == LUA_TTABLE && lua_getmetatable(L, -1) == 0) {
            int t = lua_gettop(L);
            size_t n = lua_rawlen(L, t);
            long sum = 0;
            ok = n > 0 && n <= (size_t)total;
            ro->waves = xcalloc(n + 1, sizeof *ro->waves);
            for (size_t i = 1; ok && i <= n; i++) {
                lua_rawgeti(L, t, (lua_Integer)i);
                ok = lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0 && lua_tointeger(L, -1) <= total;
                if (ok) {
                    ro->waves[ro->nwaves++] = (int)lua_tointeger(L, -1);
                    sum += lua_tointeger(L, -1);
                }
                lua_pop(L, 1);
            }
            ok = ok && sum == total;
        }
        lua_settop(L, top);
    }
    if (!ok) {
        log_warn("rollout_waves gave no usable wave sizes; one worker per wave", "error", err, NULL);
        free(ro->waves);
        ro->waves = xcalloc((size_t)total + 1, sizeof *ro->waves);
        for (int i = 0; i < total; i++)
            ro->waves[i] = 1;
        ro->nwaves = (size_t)total;
    }
}

/* ---- starting a rollout ---------------------------------------------------- */

PGresult *rollout_read_accounts(const rollout *ro, pg_conn *db, const char *const *ids, size_t n, char *err,
                                size_t errlen)
{
    char *sql = rec_accounts_sql(ro->cfg, 1), *arr = rec_text_array(ids, n);
    const char *params[] = {arr};
    PGresult *res = pg_exec(db, sql, 1, params, err, errlen);
    free(sql);
    free(arr);
    return res;
}

/* A plan of the accounts in res against observed, as a partial pass makes
 * it but with nothing settled, deferred or deletable: the rollout's own
 * renders. */
static int plan_accounts(rules *r, const config *cfg, PGresult *res, strmap *observed, plan_result *out,
                         char *err, size_t errlen)
{
    acct_rows rows;
    rows_from_pgresult(&rows, res);
    plan_input in = {.accounts = &rows, .observed = observed, .full = 0, .active_total = -1,
                     .delete_allowance = 0, .settled = NULL, .max_rows = 0, .busy = NULL};
    int rc = rec_plan(r, cfg, &in, out, err, errlen);
    rows_free(&rows);
    return rc;
}

/* The rules or image in effect differ from the state's target. */
static int start(rollout *ro, pg_conn *db, rules *current, cache *c)
{
    /* From what the workers not reached run: the target of a finished
     * rollout, else the base of the one this supersedes. */
    char *from_version, *from_image;
    buf from_rules = {0};
    if (!ro->has_row) {
        from_version = NULL;
        from_image = NULL;
    } else if (rollout_phase_is(ro, "complete")) {
        from_version = xstrdup(ro->to_version);
        from_image = xstrdup(ro->to_image);
        buf_append(&from_rules, ro->to_rules.data, ro->to_rules.len);
    } else {
        from_version = ro->from_version ? xstrdup(ro->from_version) : NULL;
        from_image = ro->from_image ? xstrdup(ro->from_image) : NULL;
        buf_append(&from_rules, ro->from_rules.data, ro->from_rules.len);
    }
    int had_row = ro->has_row, was_complete = rollout_phase_is(ro, "complete");
    rollout_state_clear(ro);
    ro->has_row = 1;
    ro->to_version = xstrdup(rules_version(current));
    ro->to_image = xstrdup(ro->cfg->worker_image);
    rollout_snapshot_current(current, ro->cfg, &ro->to_rules);
    ro->from_version = from_version;
    ro->from_image = from_image;
    ro->from_rules = from_rules;
    ro->pol = rollout_read_policy(current);
    char v[13], fv[13];
    rollout_short_version(ro->to_version, v);
    rollout_short_version(ro->from_version, fv);

    int rc = 0;
    if (!had_row) {
        /* First start with this table: the rules in effect are the base. */
        snprintf(ro->phase, sizeof ro->phase, "complete");
        log_info("rollout: recording the rules in effect as the base", "version", ro->to_version, NULL);
    } else if (rollout_from_load(ro) < 0) {
        char *msg = xasprintf("rules %s (image %s): the previous rules %s are not known; the change is "
                              "applied to every worker at once", v, ro->to_image, fv);
        ro->report(ro->ud, "RolloutSkipped", NULL, msg, 1);
        free(msg);
        rollout_complete(ro, "applied without waves");
    } else {
        /* Who changes is found in slices (rollout_search.c); the start
         * goes on in start_found once every worker is judged. Nothing is
         * stored before: a restart in the meantime starts again. */
        snprintf(ro->phase, sizeof ro->phase, "progressing");
        rollout_search_begin(ro, c, !was_complete);
        log_info("rollout: finding the workers the new rules change", "version", ro->to_version, NULL);
        rollout_publish_metrics(ro);
        return 0;
    }
    ro->dirty = 1;
    if (rollout_store_persist(ro, db) < 0)
        rc = -1;
    rollout_publish_metrics(ro);
    return rc;
}

/* Every worker judged: no rollout, or its first wave. */
static int start_found(rollout *ro, pg_conn *db, rules *current, cache *c, strmap *enqueue)
{
    char v[13], fv[13];
    rollout_short_version(ro->to_version, v);
    rollout_short_version(ro->from_version, fv);
    int rc = 0;
    if (ro->nmembers == 0) {
        snprintf(ro->phase, sizeof ro->phase, "complete");
        char *msg = xasprintf("rules %s (image %s) render no existing worker differently from %s: no rollout",
                              v, ro->to_image, fv);
        ro->report(ro->ud, "RolloutNotNeeded", NULL, msg, 0);
        free(msg);
        buf_free(&ro->from_rules);
        rollout_from_unload(ro);
    } else {
        snprintf(ro->phase, sizeof ro->phase, "progressing");
        rollout_read_waves(ro, current, (int)ro->nmembers);
        ro->wave = 0;
        rollout_reach_wave(ro, cache_deployments(c), enqueue);
        char *msg = xasprintf("rules %s (image %s) change %zu workers: %zu waves, canary %s; soak %d s, "
                              "Ready within %d s, at most %d restarts, config errors for %d s, rollback %s",
                              v, ro->to_image, ro->nmembers, ro->nwaves, ro->members[0].name, ro->pol.soak_s,
                              ro->pol.ready_timeout_s, ro->pol.max_restarts, ro->pol.waiting_s,
                              ro->pol.rollback ? "on" : "off");
        ro->report(ro->ud, "RolloutStarted", NULL, msg, 0);
        free(msg);
    }
    ro->dirty = 1;
    if (rollout_store_persist(ro, db) < 0)
        rc = -1;
    rollout_publish_metrics(ro);
    return rc;
}

int rollout_tick(rollout *ro, pg_conn *db, rules *current, cache *c, strmap *enqueue)
{
    if (rules_host(current) == NULL)
        return 0;
    int fresh = !ro->loaded; /* the passes waited for this read (rollout_ready) */
    if (fresh && rollout_store_load(ro, db) < 0)
        return 0;
    if (!ro->has_row || strcmp(ro->to_version, rules_version(current)) != 0 ||
        strcmp(ro->to_image, ro->cfg->worker_image) != 0) {
        if (start(ro, db, current, c) < 0)
            ro->loaded = 0; /* read it again before the next try */
        return rollout_ready(ro, current); /* passes waited for the start (a search does not hold them) */
    }
    if (ro->search) {
        int found = rollout_search_run(ro, db, current, c, SEARCH_BUDGET_MS);
        if (found < 0)
            rollout_search_fail(ro);
        else if (found > 0 && start_found(ro, db, current, c, enqueue) < 0)
            ro->loaded = 0;
        return 0; /* the passes did not wait for it; the first wave's accounts are in *enqueue */
    }
    if (ro->to_rules.len == 0 && rollout_snapshot_current(current, ro->cfg, &ro->to_rules) == 0)
        ro->dirty = 1;
    uint64_t now = util_now_ms();
    if (!rollout_phase_is(ro, "complete") && now >= ro->last_read_ms + REREAD_MS) {
        ro->last_read_ms = now;
        char request[16];
        rollout_store_take_request(db, request, sizeof request);
        rollout_apply_request(ro, request, cache_deployments(c), enqueue);
    }
    if (rollout_phase_is(ro, "progressing") && ro->from)
        rollout_judge(ro, cache_deployments(c), cache_pods(c), enqueue);
    else if (rollout_phase_is(ro, "progressing")) /* the previous rules are lost: nothing to hold anyone on */
        rollout_complete(ro, "previous rules unavailable; the rest applied at once");
    if (ro->dirty)
        rollout_store_persist(ro, db);
    rollout_publish_metrics(ro);
    return fresh;
}

/* ---- planning the workers not reached -------------------------------------- */

void rollout_filter(rollout *ro, pg_conn *db, strmap *observed, plan_result *plan)
{
    if (!ro->loaded || ro->from == NULL || rollout_phase_is(ro, "complete"))
        return;
    strmap ids = STRMAP_INIT;
    rollout_partition(ro, observed, plan, &ids);
    if (ids.len == 0) {
        strmap_free(&ids);
        return;
    }
    /* Plan those accounts with the previous rules and image. */
    const char **list = xcalloc(ids.len + 1, sizeof *list);
    size_t n = 0, it = 0;
    const char *k;
    while (strmap_next(&ids, &it, &k, NULL))
        list[n++] = k;
    char err[1024];
    PGresult *res = rollout_read_accounts(ro, db, list, n, err, sizeof err);
    free(list);
    strmap subset = STRMAP_BORROWED;
    plan_result old = {0};
    if (res == NULL) {
        log_warn("rollout: cannot read the accounts to plan with the previous rules; later", "error", err, NULL);
        goto out;
    }
    it = 0;
    void *v;
    while (strmap_next(observed, &it, NULL, &v)) {
        obs_deploy *d = v;
        if (d->account_id && strmap_get(&ids, d->account_id))
            strmap_put(&subset, d->name, d);
    }
    if (plan_accounts(ro->from, &ro->from_cfg, res, &subset, &old, err, sizeof err) < 0) {
        log_warn("rollout: planning with the previous rules failed; nothing sent for those workers", "error", err,
                 NULL);
        goto out;
    }
    for (size_t i = 0; i < old.n; i++) {
        action *a = &old.actions[i];
        if (a->kind != ACT_UPDATE && a->kind != ACT_CREATE && a->kind != ACT_ERROR)
            continue;
        if (a->account_id == NULL || strmap_get(&ids, a->account_id) == NULL)
            continue;
        if (a->kind == ACT_CREATE && a->name && strmap_get(&ro->by_name, a->name) == NULL) {
            /* Born on the previous rules: the rollout reaches it too. */
            rollout_member_add(ro, a->name, a->account_id, NULL, 1);
            ro->dirty = 1;
        }
        plan->actions = xrealloc(plan->actions, (plan->n + 1) * sizeof *plan->actions);
        plan->actions[plan->n++] = *a;
        memset(a, 0, sizeof *a); /* moved */
    }
out:
    if (res)
        PQclear(res);
    rec_plan_free(&old);
    strmap_free(&subset);
    strmap_free(&ids);
}

void rollout_plan_filter(const config *cfg, pg_conn *db, rules *current, strmap *observed, plan_result *plan)
{
    rollout *ro = rollout_new(cfg, NULL, NULL);
    if (rollout_store_load(ro, db) == 0 && rollout_ready(ro, current))
        rollout_filter(ro, db, observed, plan);
    rollout_free(ro);
}

void rollout_print_summary(const config *cfg, pg_conn *db, FILE *f)
{
    rollout *ro = rollout_new(cfg, NULL, NULL);
    if (rollout_store_load(ro, db) == 0 && ro->has_row) {
        if (rollout_phase_is(ro, "complete"))
            fprintf(f, "rollout: complete (rules %.12s)\n", ro->to_version);
        else
            fprintf(f, "rollout: %s, wave %d of %zu, %d of %zu changed workers on rules %.12s%s%s "
                       "(sync-airbnb-operator rollout status)\n",
                    ro->phase, ro->wave + 1, ro->nwaves, ro->reached, ro->nmembers, ro->to_version,
                    ro->halt_reason ? ": " : "", ro->halt_reason ? ro->halt_reason : "");
    }
    rollout_free(ro);
}

/* ---- reporting --------------------------------------------------------------- */

void rollout_json(const rollout *ro, json_out *o)
{
    jo_object(o);
    jo_kstr(o, "phase", ro->loaded ? ro->phase : NULL);
    jo_kstr(o, "to_version", ro->loaded ? ro->to_version : NULL);
    jo_kint(o, "workers", (long long)ro->nmembers);
    jo_kint(o, "reached", ro->reached);
    jo_kint(o, "wave", ro->nwaves ? ro->wave + 1 : 0);
    jo_kint(o, "waves", (long long)ro->nwaves);
    jo_kbool(o, "halted", ro->loaded && rollout_phase_is(ro, "halted"));
    jo_kbool(o, "finding_workers", rollout_searching(ro)); /* who changes: judged in slices */
    jo_end(o);
}

