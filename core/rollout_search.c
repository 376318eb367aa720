/* rollout_search: which workers a rules change changes (rollout_int.h).
 *
 * A worker is a member of the rollout when the new rules render its account
 * differently from the previous rules, both rendered from the same row (a
 * credential change is not a rules change), unless its Deployment already
 * carries what the new rules render. Only the workers that do not are
 * rendered under the previous rules too: a reload that changes nothing
 * renders each worker once.
 *
 * With 100,000 workers that is a minute of rendering, so it is not one step:
 * the Deployments present when the rollout starts are judged in name order,
 * a slice at a time, for a few milliseconds per turn of the event loop
 * (rollout_search_run), and the event loop reacts in between. A pass in the
 * meantime first judges the workers it updates (rollout_resolve), so that it
 * holds exactly those the new rules change; creates and deletes need no
 * judging. Members are sorted by name at the end, so the waves do not depend
 * on which accounts changed during the search. */
#include "rollout_int.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Deployments per rules call: the first slice's size, and the most. The
 * size follows what a render costs, so that one slice fits the turn's
 * budget (0.5 ms a render with the shipped rules; a rule can take far
 * more). */
#define SLICE_FIRST 4
#define SLICE_MAX 128

typedef struct member_search {
    char **names;        /* the managed Deployments when the rollout started, sorted */
    unsigned char *done; /* per name: judged */
    size_t n, at;        /* the slices judge names[at..n) */
    size_t slice;        /* Deployments in the next slice */
    int superseding;
    uint64_t started_ms;
} member_search;

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void rollout_search_begin(rollout *ro, cache *c, int superseding)
{
    rollout_search_free(ro);
    member_search *s = xcalloc(1, sizeof *s);
    strmap *deps = cache_deployments(c);
    s->names = xcalloc(deps->len + 1, sizeof *s->names);
    size_t it = 0;
    void *v;
    while (strmap_next(deps, &it, NULL, &v)) {
        const obs_deploy *d = v;
        if (d->managed && d->account_id)
            s->names[s->n++] = xstrdup(d->name);
    }
    qsort(s->names, s->n, sizeof *s->names, name_cmp);
    s->done = xcalloc(s->n + 1, 1);
    s->superseding = superseding;
    s->slice = SLICE_FIRST;
    s->started_ms = util_now_ms();
    ro->search = s;
}

void rollout_search_free(rollout *ro)
{
    member_search *s = ro->search;
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->names[i]);
    free(s->names);
    free(s->done);
    free(s);
    ro->search = NULL;
}

void rollout_search_fail(rollout *ro)
{
    rollout_search_free(ro);
    rollout_members_clear(ro);
    free(ro->to_version);
    ro->to_version = xstrdup("");
    ro->loaded = 0;
    rollout_publish_metrics(ro);
}

int rollout_searching(const rollout *ro)
{
    return ro != NULL && ro->loaded && ro->search != NULL;
}

/* account id → desired hash of every active account of rows under r. */
static int render_hashes(rules *r, const config *cfg, const acct_rows *rows, strmap *out)
{
    strmap none = STRMAP_INIT;
    plan_result p = {0};
    char err[1024];
    plan_input in = {.accounts = rows, .observed = &none, .full = 0, .active_total = -1,
                     .delete_allowance = 0, .settled = NULL, .max_rows = 0, .busy = NULL};
    int rc = rec_plan(r, cfg, &in, &p, err, sizeof err);
    if (rc == 0) {
        for (size_t i = 0; i < p.n; i++)
            if (p.actions[i].kind == ACT_CREATE && p.actions[i].account_id && p.actions[i].desired_hash)
                free(strmap_put(out, p.actions[i].account_id, xstrdup(p.actions[i].desired_hash)));
    } else {
        log_warn("rollout: cannot render the workers", "error", err, NULL);
    }
    rec_plan_free(&p);
    strmap_free(&none);
    return rc;
}

static void free_values(strmap *m)
{
    size_t it = 0;
    void *v;
    while (strmap_next(m, &it, NULL, &v))
        free(v);
    strmap_free(m);
}

static int carries(const char *render, const obs_deploy *d)
{
    return render && d->applied_hash && strcmp(render, d->applied_hash) == 0;
}

/* Judges the Deployments ds[0..nd), whose accounts' rows are in rows. */
static int judge(rollout *ro, rules *current, const acct_rows *rows, const obs_deploy *const *ds, size_t nd)
{
    strmap before = STRMAP_INIT, after = STRMAP_INIT;
    int rc = render_hashes(current, ro->cfg, rows, &after);
    if (rc == 0) {
        /* Rendered under the previous rules too: the accounts with a
         * Deployment that does not carry the new render. */
        strmap need = STRMAP_BORROWED;
        for (size_t i = 0; i < nd; i++)
            if (!carries(strmap_get(&after, ds[i]->account_id), ds[i]))
                strmap_put(&need, ds[i]->account_id, (void *)1);
        int idcol = rows_column(rows, "account_id");
        int *again = xcalloc((size_t)rows->nrows + 1, sizeof *again), nagain = 0;
        for (int r = 0; r < rows->nrows; r++) {
            const char *id = rows_value(rows, r, idcol);
            if (id && strmap_get(&need, id))
                again[nagain++] = r;
        }
        acct_rows differ;
        rows_subset(&differ, rows, again, nagain);
        if (nagain > 0 && render_hashes(ro->from, &ro->from_cfg, &differ, &before) < 0)
            rc = -1;
        rows_free(&differ);
        free(again);
        strmap_free(&need);
    }
    for (size_t i = 0; rc == 0 && i < nd; i++) {
        const obs_deploy *d = ds[i];
        const char *now = strmap_get(&after, d->account_id), *was = strmap_get(&before, d->account_id);
        if (carries(now, d))
            continue; /* it carries what the new rules render */
        if (was == NULL && now == NULL)
            continue; /* not a live account under either: its delete is not a rules change */
        if (was && now && strcmp(was, now) == 0)
            continue;
        /* The previous rules may plan it until its wave when it runs what
         * they render, or when nothing but them can have moved it: a
         * credential change waiting to roll (or one made during the search)
         * rolls on the previous rules. A worker that a superseded rollout
         * may have moved keeps what it has until its wave. */
        int on_from = was != NULL && (carries(was, d) || !ro->search->superseding);
        rollout_member_add(ro, d->name, d->account_id, NULL, on_from);
    }
    free_values(&before);
    free_values(&after);
    return rc;
}

/* Reads the rows of ds's accounts and judges ds. */
static int judge_read(rollout *ro, pg_conn *db, rules *current, const obs_deploy *const *ds, size_t nd)
{
    const char **ids = xcalloc(nd + 1, sizeof *ids);
    for (size_t i = 0; i < nd; i++)
        ids[i] = ds[i]->account_id;
    char err[512];
    PGresult *res = rollout_read_accounts(ro, db, ids, nd, err, sizeof err);
    free(ids);
    if (res == NULL) {
        log_warn("rollout: cannot read the accounts", "error", err, NULL);
        return -1;
    }
    acct_rows rows;
    rows_from_pgresult(&rows, res);
    int rc = judge(ro, current, &rows, ds, nd);
    rows_free(&rows);
    PQclear(res);
    return rc;
}

int rollout_search_run(rollout *ro, pg_conn *db, rules *current, cache *c, uint64_t budget_ms)
{
    member_search *s = ro->search;
    if (s == NULL)
        return 1;
    strmap *deps = cache_deployments(c);
    uint64_t t0 = util_now_ms();
    do {
        const obs_deploy *ds[SLICE_MAX];
        size_t nd = 0;
        uint64_t t1 = util_now_ms();
        while (s->at < s->n && nd < s->slice) {
            size_t i = s->at++;
            if (s->done[i])
                continue; /* judged by a partial pass */
            s->done[i] = 1;
            const obs_deploy *d = strmap_get(deps, s->names[i]);
            if (d && d->managed && d->account_id) /* else deleted since */
                ds[nd++] = d;
        }
        if (nd > 0 && judge_read(ro, db, current, ds, nd) < 0)
            return -1;
        uint64_t took = util_now_ms() - t1;
        if (nd == s->slice) {
            size_t fits = took > 0 ? (size_t)((double)nd * (double)budget_ms / (double)took) : nd * 2;
            s->slice = fits < 1 ? 1 : fits > SLICE_MAX ? SLICE_MAX : fits;
        }
    } while (s->at < s->n && util_now_ms() - t0 < budget_ms);
    if (s->at < s->n)
        return 0;
    char n[24], ms[24];
    snprintf(n, sizeof n, "%zu", s->n);
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)(util_now_ms() - s->started_ms));
    log_info("rollout: every worker judged", "workers", n, "ms", ms, NULL);
    rollout_search_free(ro);
    rollout_members_sort(ro);
    return 1;
}

int rollout_resolve(rollout *ro, rules *current, const acct_rows *rows, const plan_result *plan,
                    strmap *observed)
{
    member_search *s = ro->search;
    if (!rollout_searching(ro))
        return 0;
    const obs_deploy **ds = xcalloc(plan->n + 1, sizeof *ds);
    strmap accounts = STRMAP_BORROWED; /* of the Deployments to judge */
    size_t nd = 0;
    for (size_t i = 0; i < plan->n; i++) {
        const action *a = &plan->actions[i];
        const obs_deploy *d = a->kind == ACT_UPDATE && a->name ? strmap_get(observed, a->name) : NULL;
        if (d == NULL || !d->managed || d->account_id == NULL)
            continue;
        char *key = d->name, **hit = bsearch(&key, s->names, s->n, sizeof *s->names, name_cmp);
        if (hit && !s->done[hit - s->names]) {
            s->done[hit - s->names] = 1;
            ds[nd++] = d;
            strmap_put(&accounts, d->account_id, (void *)1);
        }
    }
    int rc = 0;
    if (nd > 0) {
        /* Only their rows are rendered (a full pass holds every row). */
        int idcol = rows_column(rows, "account_id"), *idx = xcalloc(nd + 1, sizeof *idx), k = 0;
        for (int r = 0; r < rows->nrows && (size_t)k < nd; r++) {
            const char *id = rows_value(rows, r, idcol);
            if (id && strmap_del(&accounts, id))
                idx[k++] = r;
        }
        acct_rows sub;
        rows_subset(&sub, rows, idx, k);
        rc = judge(ro, current, &sub, ds, nd);
        rows_free(&sub);
        free(idx);
    }
    strmap_free(&accounts);
    free(ds);
    if (rc < 0)
        rollout_search_fail(ro);
    return rc;
}
