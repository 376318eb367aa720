/* controller: see controller.h.
 *
 * Invariants kept here (DESIGN.md §5): no pass runs while the database is
 * unreachable, the schema is not at head, the Deployment cache has not been
 * listed, or this process is not the leader — so a database error can never
 * turn into deletes, and a standby never writes. Every write re-checks
 * leadership right before it is sent (writer.h, and the kube_async gate). */
#include "controller.h"

#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "cache.h"
#include "expect.h"
#include "health.h"
#include "json.h"
#include "kube.h"
#include "leader.h"
#include "log.h"
#include "metrics.h"
#include "migrate.h"
#include "reconcile.h"
#include "rollout.h"
#include "rules.h"
#include "rules_event.h"
#include "safety.h"
#include "settled_store.h"
#include "strmap.h"
#include "trail.h"
#include "util.h"
#include "watch.h"
#include "worker_state.h"
#include "writer.h"
#include "wstatus.h"

#define MAX_PARTIAL 1000
#define FOLLOWUP_MS 20 /* delay of the pass that continues a deferred backlog */
#define SHUTDOWN_BOUND_MS 10000
#define MAX_RESYNCS_POSTPONED 4
#define SETTLED_SAVE_MS 60000 /* the settled set is saved at most this often (and when stopping) */

typedef struct ctl {
    const config *cfg;
    uv_loop_t loop;

    watch *watch; /* stage 1: the database watch and the queue */
    kube_config kcfg;
    kube_client *kc;
    kube_async *ka;
    cache *cache; /* the informer: the Deployments and Pods we manage */
    wstatus *ws;  /* worker health rows for the admin side */
    rules *rules; /* stage 2's rules (reconcile.h plans with them) */
    rollout *rollout; /* rules changes in waves (rollout.h): filters stage 2's plan */
    uv_fs_event_t rules_watch;
    uv_timer_t reload_timer;
    uv_idle_t search_idle; /* the rollout's member search: a slice per turn of the loop */
    safety_window window; /* stage 3's mass-delete window (safety.h) */
    writer *writer;       /* stage 4 */
    trail trail;          /* stage 5 */
    expect expect;        /* writes made, their watch echo not yet seen (expect.h) */
    strmap requeue;       /* account ids to plan again when their write is done and seen */
    rec_settled settled;  /* see plan_input.settled */
    int settled_loaded;   /* the saved set was read (settled_store.h): once per process */
    unsigned long long settled_saved_sum; /* settled_store_sum of what was saved last */
    uint64_t settled_saved_ms;

    leader *leader;
    uv_async_t leader_async;
    int was_leader;

    health *health;
    uv_timer_t resync_timer, tick_timer, drain_timer;
    uv_signal_t sigterm, sigint;
    int resyncs_postponed; /* resyncs that came during a backlog (on_resync) */

    double delete_tokens;
    uint64_t delete_refill_ms;
    int held_deletes;
    char *hold_reason;

    uint64_t passes, trimmed_at_passes, memory_logged_ms;
    /* The cache's Deployments counted as they change (publish runs every
     * tick: a sweep over 100,000 was a third of an idle operator's CPU). */
    long workers_present, workers_ready, workers_paused;
    uint64_t last_pass_wall_ms;
    double last_pass_seconds;
    char last_result[64];
    int stopping;
    uint64_t stop_deadline;
} ctl;

static void publish(ctl *c);
static void rollout_step(ctl *c);
static void on_search_idle(uv_idle_t *h);

static int is_leader(const ctl *c)
{
    return c->leader != NULL && leader_is_leader(c->leader);
}

static int may_write(void *ud)
{
    return is_leader(ud);
}

static pg_conn *live_db(void *ud)
{
    const ctl *c = ud;
    return c->watch ? watch_db(c->watch) : NULL;
}

/* Writes wait: a full pass due, a backlog of deferred accounts, or writes in flight. */
static int write_backlog(const ctl *c)
{
    if (c->watch == NULL)
        return 0;
    return watch_full_pending(c->watch) || watch_backlog_left(c->watch) || writer_inflight(c->writer) > 0;
}

/* Events wait while writes do (audit.h's event_queue); not once stopping. */
static int events_hold(void *ud)
{
    const ctl *c = ud;
    return write_backlog(c) && !c->stopping;
}

/* Plan account_id again once nothing of its own is in flight or expected. */
static void plan_again(ctl *c, const char *account_id, const char *name)
{
    if (account_id == NULL)
        return;
    if (writer_busy(c->writer, name) || expect_pending(&c->expect, name))
        strmap_put(&c->requeue, account_id, (void *)1);
    else
        watch_enqueue(c->watch, account_id);
}

/* A worker a rules rollout has not reached shows as waiting in its status row. */
static void mark_rollout_member(const char *account_id, int waiting, void *ud)
{
    wstatus_set_rollout(ud, account_id, waiting);
}

/* ---- stage 4 → 5: what the writer reports ------------------------------------ */

static void on_write_outcome(const write_outcome *o, void *ud)
{
    ctl *c = ud;
    trail_write(&c->trail, o);
    if (o->result == WRITE_UNMANAGED_CONFLICT || o->result == WRITE_FAILED)
        wstatus_on_write(c->ws, o->account_id, o->reason);
    else if (o->result != WRITE_RETRY_LATER && o->result != WRITE_GONE && o->result != WRITE_OWNERSHIP_MOVED)
        wstatus_on_write(c->ws, o->account_id, NULL);
    /* The cache owns current; expect_write may set what only we know on it. */
    obs_deploy *current = strmap_get(cache_deployments(c->cache), o->name);
    uint64_t now = util_now_ms();
    switch (o->result) {
    case WRITE_CREATED:
    case WRITE_UPDATED:
    case WRITE_ALREADY_OURS:
    case WRITE_DELETED:
        watch_forgive(c->watch, o->account_id);
        if (o->account_id && watch_backlog_left(c->watch))
            /* Settle it in the pass that continues the backlog (no kick of its own). */
            watch_enqueue_quiet(c->watch, o->account_id);
        expect_write(&c->expect, o->name, o->account_id, o->resource_version, o->applied_generation,
                     o->result == WRITE_DELETED, current, now);
        break;
    case WRITE_GONE:
        if (o->kind == ACT_DELETE) /* the watch's deletion is still to come */
            expect_write(&c->expect, o->name, o->account_id, 0, 0, 1, current, now);
        break;
    case WRITE_OWNERSHIP_MOVED:
        expect_write(&c->expect, o->name, o->account_id, o->resource_version, 0, 0, current, now);
        break;
    case WRITE_RETRY_LATER:
    case WRITE_UNMANAGED_CONFLICT:
    case WRITE_FAILED:
        if (o->backoff)
            watch_fail_later(c->watch, o->account_id);
        break;
    }
    expect_write_done(&c->expect, o->name);
    if (o->replan)
        plan_again(c, o->account_id, o->name);
    if (o->account_id && strmap_del(&c->requeue, o->account_id))
        plan_again(c, o->account_id, o->name);
    if ((watch_full_pending(c->watch) || watch_backlog_left(c->watch)) && writer_inflight(c->writer) < REC_PLAN_CHUNK / 2)
        watch_kick_after(c->watch, FOLLOWUP_MS);
    if (!write_backlog(c))
        event_queue_flush(&c->trail.events);
    /* /readyz follows within a second (on_tick): publishing here would walk
     * the whole cache once per write. */
}

/* Hands one action to the writer. Returns 1 when a request went out, 0
 * when nothing was sent (a hold or error reported, a write of it in flight
 * or expected, the account in backoff, leadership lost). */
static int execute(ctl *c, const action *a)
{
    if (a->kind == ACT_HOLD || a->kind == ACT_ERROR) {
        trail_planned(&c->trail, a);
        return 0;
    }
    if (writer_busy(c->writer, a->name) || expect_pending(&c->expect, a->name)) {
        /* Planned from a state our own write is changing: never sent
         * twice; planned again once the write is done and seen. */
        if (a->account_id)
            strmap_put(&c->requeue, a->account_id, (void *)1);
        return 0;
    }
    if (watch_backing_off(c->watch, a->account_id, util_now_ms()))
        return 0; /* watch_tick queues it when the wait is over */
    if (!is_leader(c))
        return 0;
    trail_sending(&c->trail, a->name);
    const obs_deploy *live = a->kind == ACT_UPDATE ? strmap_get(cache_deployments(c->cache), a->name) : NULL;
    return writer_send(c->writer, a, live);
}

/* ---- the pass: stages 1 → 2 → 3 → 4 ------------------------------------------------ */

static int ready_to_plan(ctl *c)
{
    return !c->stopping && watch_db_up(c->watch) && watch_schema_ok(c->watch) && c->cache &&
           cache_synced(c->cache) && rules_host(c->rules) != NULL && is_leader(c) &&
           rollout_ready(c->rollout, c->rules);
}

/* Accounts with a write of theirs expected are left out of a partial pass
 * (planned again when the write is seen: on_cache_change); so are those
 * with a write in flight (requeued by execute). */
static void drop_expected(ctl *c, watch_batch *b, const strmap *expected)
{
    size_t keep = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (strmap_get(expected, b->ids[i])) {
            strmap_put(&c->requeue, b->ids[i], (void *)1);
            free(b->ids[i]);
        } else {
            b->ids[keep++] = b->ids[i];
        }
    }
    b->n = keep;
}

/* A full pass defers what it does not plan now (beyond its chunk, or with a
 * write in flight) in the table's order. The accounts a notification asked
 * about go first: after a rules change, when every account is planned
 * again, a credential change committed just before the pass otherwise
 * waited for all the others (2.7 s at 10,000 accounts). */
static void asked_first(plan_result *plan, const watch_batch *b)
{
    strmap asked = STRMAP_BORROWED;
    for (size_t i = 0; i < b->n; i++)
        strmap_put(&asked, b->ids[i], (void *)1);
    buf out = {0};
    const char *end = plan->deferred_ids + plan->deferred_ids_len;
    for (int first = 1; first >= 0; first--)
        for (const char *id = plan->deferred_ids; id < end; id += strlen(id) + 1)
            if ((strmap_get(&asked, id) != NULL) == first)
                buf_append(&out, id, strlen(id) + 1);
    free(plan->deferred_ids);
    plan->deferred_ids = out.data;
    plan->deferred_ids_len = out.len;
    strmap_free(&asked);
}

/* The held-deletes state /readyz shows, after a pass. */
static void note_holds(ctl *c, const plan_result *plan, int full)
{
    if (full || plan->held_deletes > c->held_deletes) {
        c->held_deletes = plan->held_deletes;
        free(c->hold_reason);
        c->hold_reason = plan->hold_reason ? xstrdup(plan->hold_reason) : NULL;
    }
    if (full)
        metrics_set("sync_airbnb_operator_workers", "state=\"desired\"", plan->desired);
    metrics_set("sync_airbnb_operator_deletes_held", NULL, c->held_deletes);
}

/* The settled set a previous leader saved, before the first pass plans:
 * a restart then plans only the accounts whose input changed. */
static void settled_load(ctl *c, pg_conn *db)
{
    if (c->settled_loaded)
        return;
    c->settled_loaded = 1;
    char tag[65], err[512];
    settled_store_tag(c->cfg, c->rules, tag);
    uint64_t t0 = util_now_ms();
    long n = settled_store_load(db, tag, &c->settled, err, sizeof err);
    char num[24], ms[24];
    snprintf(num, sizeof num, "%ld", n);
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)(util_now_ms() - t0));
    if (n < 0)
        log_warn("the saved settled set could not be read; planning every account", "error", err, NULL);
    else
        log_info("settled set read", "digests", num, "ms", ms, NULL);
    c->settled_saved_sum = settled_store_sum(&c->settled);
}

/* Saves the settled set when it changed (at most every SETTLED_SAVE_MS
 * unless force). Only the leader's set is worth keeping. */
static void settled_save(ctl *c, pg_conn *db, int force)
{
    uint64_t now = util_now_ms();
    if (db == NULL || !is_leader(c) || !c->settled_loaded || c->settled.len == 0 ||
        (!force && c->settled_saved_ms && now - c->settled_saved_ms < SETTLED_SAVE_MS))
        return;
    unsigned long long sum = settled_store_sum(&c->settled);
    if (sum == c->settled_saved_sum)
        return;
    char tag[65], err[512];
    settled_store_tag(c->cfg, c->rules, tag);
    if (settled_store_save(db, tag, &c->settled, err, sizeof err) < 0) {
        log_warn("the settled set could not be saved (a restart plans every account again)", "error", err, NULL);
        return;
    }
    c->settled_saved_sum = sum;
    c->settled_saved_ms = now;
    char num[24], ms[24];
    snprintf(num, sizeof num, "%zu", c->settled.len);
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)(util_now_ms() - now));
    log_debug("settled set saved", "digests", num, "ms", ms, NULL);
}

static void pass(void *ud)
{
    ctl *c = ud;
    if (!ready_to_plan(c))
        return;
    const config *cfg = c->cfg;
    uint64_t t0 = util_now_ms();

    /* Refill the delete budget: DELETE_BUDGET per resync interval. */
    double per_ms = (double)cfg->delete_budget / ((double)cfg->resync_interval_s * 1000.0);
    c->delete_tokens += (double)(t0 - c->delete_refill_ms) * per_ms;
    if (c->delete_tokens > cfg->delete_budget)
        c->delete_tokens = cfg->delete_budget;
    c->delete_refill_ms = t0;

    watch_batch b;
    if (!watch_take(c->watch, MAX_PARTIAL, REC_PLAN_CHUNK, &b))
        return;
    int full = b.full;
    strmap busy = STRMAP_BORROWED; /* keys: account ids inside the writer's and expect's records */
    strmap expected = STRMAP_BORROWED;
    expect_accounts(&c->expect, &expected);
    if (!full) {
        drop_expected(c, &b, &expected);
        if (b.n == 0) {
            strmap_free(&expected);
            watch_batch_free(&b);
            return;
        }
    }
    writer_accounts(c->writer, &busy);
    expect_accounts(&c->expect, &busy);

    char err[1024];
    char *sql = full ? rec_accounts_light_sql(cfg) : rec_accounts_sql(cfg, 1);
    char *arr = full ? NULL : rec_text_array((const char *const *)b.ids, b.n);
    const char *params[] = {arr};
    pg_conn *db = watch_db(c->watch);
    settled_load(c, db);
    PGresult *res = pg_exec(db, sql, full ? 0 : 1, params, err, sizeof err);
    free(sql);
    free(arr);
    long active_total = -1;
    strmap subset = STRMAP_BORROWED; /* keys: names inside the cache's items */
    plan_result plan = {0};
    acct_rows rows = {0};
    if (res == NULL) {
        metrics_add("sync_airbnb_operator_db_errors_total", NULL, 1);
        if (!pg_ok(db)) {
            watch_db_lost(c->watch, err);
        } else {
            char *msg = xasprintf("reading the accounts failed: %s", err);
            trail_pass_error(&c->trail, msg);
            free(msg);
        }
        watch_retry_full(c->watch); /* nothing was done: plan everything once the database answers */
        goto out;
    }
    rows_from_pgresult(&rows, res);
    strmap *observed = cache_deployments(c->cache);
    if (!full) {
        /* Only the Deployments of the accounts asked about: the rest are not in this input. */
        strmap want = STRMAP_BORROWED;
        for (size_t i = 0; i < b.n; i++)
            strmap_put(&want, b.ids[i], (void *)1);
        size_t it = 0;
        void *v;
        while (strmap_next(observed, &it, NULL, &v)) {
            obs_deploy *d = v;
            if (d->account_id && strmap_get(&want, d->account_id))
                strmap_put(&subset, d->name, d);
        }
        strmap_free(&want);
        observed = &subset;
        char *csql = rec_active_any_sql(cfg);
        PGresult *cres = pg_exec(db, csql, 0, NULL, err, sizeof err);
        free(csql);
        if (cres) {
            active_total = atol(PQgetvalue(cres, 0, 0));
            PQclear(cres);
        }
    }
    plan_input in = {&rows, observed, full, active_total, (int)c->delete_tokens, &c->settled, REC_PLAN_CHUNK, &busy,
                     full};
    if (rec_plan(c->rules, cfg, &in, &plan, err, sizeof err) < 0) {
        wstatus_on_pass(c->ws, res, full, NULL, rules_version(c->rules));
        trail_pass_error(&c->trail, err);
        goto out;
    }
    trail_pass_error(&c->trail, NULL);
    char token[128] = "";
    if (c->leader)
        leader_release_token(c->leader, token, sizeof token);
    size_t workers = cache_deployments(c->cache)->len;
    if (safety_hold_mass_deletes(&c->window, cfg, &plan, workers, token, c->held_deletes, util_now_ms())) {
        log_info("deletes released by the Lease annotation", "annotation", LEADER_RELEASE_ANNOTATION, "value",
                 token, NULL);
        trail_note(&c->trail, "hold", "deletes released by a person (Lease annotation " LEADER_RELEASE_ANNOTATION ")");
    }
    /* A rules change still finding the workers it changes: those this plan
     * updates are judged now, so that the filter holds exactly its members. */
    if (rollout_resolve(c->rollout, c->rules, &rows, &plan, observed) < 0) {
        rec_plan_free(&plan); /* who changes cannot be told: planned again once the rollout started again */
        watch_retry_full(c->watch);
        goto out;
    }
    rollout_filter(c->rollout, db, cache_deployments(c->cache), &plan); /* workers not reached: previous rules */
    wstatus_clear_rollout(c->ws);
    rollout_foreach_member(c->rollout, mark_rollout_member, c->ws);
    wstatus_on_pass(c->ws, res, full, &plan, rules_version(c->rules)); /* holds included */
    int writes = 0;
    for (size_t i = 0; i < plan.n; i++) {
        /* Only a delete that was sent uses the budget. */
        int sent = execute(c, &plan.actions[i]);
        if (sent && plan.actions[i].kind == ACT_DELETE) {
            c->delete_tokens -= 1;
            safety_window_add(&c->window, util_now_ms());
        }
        writes += sent;
    }
    if (plan.deferred > 0) {
        /* More accounts wait, in front of the rest of the backlog. A write
         * finishing kicks the next pass; with nothing in flight, nothing
         * would, so kick now. */
        if (full && b.n > 0)
            asked_first(&plan, &b);
        watch_defer(c->watch, plan.deferred_ids, plan.deferred_ids_len);
        if (writer_inflight(c->writer) == 0)
            watch_kick_after(c->watch, FOLLOWUP_MS);
    } else if (watch_backlog_left(c->watch)) {
        /* This chunk is done and more of the backlog waits. A chunk that
         * wrote nothing (a restart with every worker in place) has no write
         * outcome to continue it: without this kick the backlog waited for
         * the next resync, which starts it again from the top. */
        if (writer_inflight(c->writer) < REC_PLAN_CHUNK / 2)
            watch_kick_after(c->watch, FOLLOWUP_MS);
    } else if (b.took_backlog) {
        /* The backlog is done. No full pass to close it: the last chunk's
         * accounts settle at the next resync, and meanwhile the held Events
         * go out (a full pass now would hold every row of the table in
         * memory while every Event of the backlog is still held). */
        watch_backlog_clear(c->watch);
    }
    note_holds(c, &plan, full);
    metrics_add("sync_airbnb_operator_accounts_planned_total", NULL, plan.planned);
    metrics_set("sync_airbnb_operator_settled_accounts", NULL, (double)c->settled.len);
    if (full)
        settled_save(c, db, 0);
    snprintf(c->last_result, sizeof c->last_result, "%s: %d planned, %d deferred, %d writes, %d held",
             full ? "full" : "partial", plan.planned, plan.deferred, writes, plan.held_deletes);
    if (log_enabled(LOG_DEBUG)) {
        char ms[24];
        snprintf(ms, sizeof ms, "%llu", (unsigned long long)(util_now_ms() - t0));
        log_debug("reconcile pass", "kind", full ? "full" : "partial", "result", c->last_result, "ms", ms, NULL);
    }
out:
    rows_free(&rows);
    if (res)
        PQclear(res);
    rec_plan_free(&plan);
    strmap_free(&subset);
    strmap_free(&busy);
    strmap_free(&expected);
    watch_batch_free(&b);
    c->passes++;
    c->last_pass_wall_ms = util_wall_ms();
    c->last_pass_seconds = (double)(util_now_ms() - t0) / 1000.0;
    metrics_observe("sync_airbnb_operator_reconcile_duration_seconds", full ? "kind=\"full\"" : "kind=\"partial\"",
                    c->last_pass_seconds);
    metrics_add("sync_airbnb_operator_reconcile_passes_total", full ? "kind=\"full\"" : "kind=\"partial\"", 1);
    publish(c);
}

/* ---- the cluster: the informer's events --------------------------------------------- */

/* trail.h's uid_of: the uid of a Deployment of the cache. */
static const char *deployment_uid(const char *name, void *ud)
{
    ctl *c = ud;
    const obs_deploy *d = c->cache ? strmap_get(cache_deployments(c->cache), name) : NULL;
    return d ? d->uid : NULL;
}

static void count_worker(ctl *c, const obs_deploy *d, int sign)
{
    if (d == NULL)
        return;
    c->workers_present += sign;
    c->workers_ready += sign * (d->ready_replicas > 0);
    c->workers_paused += sign * (d->managed && wstate_paused(d));
}

static void on_cache_change(enum cache_kind kind, const char *name, const void *old, const void *now,
                            void *ud)
{
    ctl *c = ud;
    if (kind == CACHE_DEPLOYMENT && name != NULL) {
        count_worker(c, old, -1);
        count_worker(c, now, 1);
    }
    wstatus_on_cache(c->ws, kind, name, old, now);
    if (name == NULL) { /* a list completed */
        if (kind == CACHE_DEPLOYMENT) {
            /* The rollout's state gates the first pass (ready_to_plan):
             * load it now rather than at the next tick, up to a second
             * later (start-up and restart time). */
            rollout_step(c);
            watch_kick_full(c->watch);
        }
        return;
    }
    if (kind != CACHE_DEPLOYMENT)
        return;
    const obs_deploy *o = old, *n = now;
    if (n && writer_busy(c->writer, name))
        expect_seen(&c->expect, name, n->resource_version); /* the echo may beat the answer */
    char *account = NULL;
    int was_delete = 0;
    /* A person paused or resumed it (our writes never touch the annotation;
     * the leader reports it):
     * before the expectations, which may take this event for our write's echo. */
    if (o && n && n->managed && wstate_paused(o) != wstate_paused(n) && is_leader(c)) {
        trail_pause_changed(&c->trail, n->account_id, n->name, n->uid, wstate_paused(n));
        if (!wstate_paused(n) && n->account_id)
            watch_enqueue(c->watch, n->account_id); /* resumed: what is pending applies now */
    }
    /* The cache owns n; what only we know (the generation our apply made)
     * is set on it when this is our write's echo (cache.h's upsert keeps it). */
    switch (expect_observe(&c->expect, name, (obs_deploy *)n, &account, &was_delete)) {
    case EXPECT_STALE:
        return; /* from before our write: the pass waits for the echo */
    case EXPECT_MET:
        if (account && strmap_del(&c->requeue, account))
            watch_enqueue(c->watch, account);
        free(account);
        if (n != NULL || was_delete)
            return; /* our own write, seen */
        break; /* deleted by someone else after our write: as below */
    case EXPECT_NONE:
        break;
    }
    if (n == NULL) {
        /* Deleted: by us (the account is inactive: the pass finds nothing to
         * do) or by hand (it comes back). */
        if (o->account_id && !writer_busy(c->writer, o->name))
            watch_enqueue(c->watch, o->account_id);
        return;
    }
    int drifted = n->applied_generation > 0 && n->generation > n->applied_generation;
    int hash_changed = o && ((o->applied_hash == NULL) != (n->applied_hash == NULL) ||
                             (o->applied_hash && n->applied_hash && strcmp(o->applied_hash, n->applied_hash)));
    if ((drifted || hash_changed) && n->account_id && !writer_busy(c->writer, n->name)) {
        log_info("managed Deployment changed outside the operator; restoring", "deployment", n->name,
                 "account_id", n->account_id, NULL);
        watch_enqueue(c->watch, n->account_id);
    }
}

/* ---- rules hot reload ------------------------------------------------------ */

/* Candidate rules must plan over the live accounts before they take effect:
 * a sample of REC_PLAN_CHUNK whole rows (the first by id) with their
 * Deployments, and the Deployments whose row is gone. Only the sample's
 * rows and the table's ids are read: reading every row whole blocked a
 * reload for 318 ms at 100,000 accounts (docs/benchmarks.md section 12). */
static int check_candidate(rules *r, luahost *candidate, void *ud, char *err, size_t errlen)
{
    ctl *c = ud;
    pg_conn *db = c->watch ? watch_db(c->watch) : NULL;
    if (db == NULL || c->cache == NULL || !cache_synced(c->cache))
        return 0; /* nothing live to plan over yet: the self-check is the gate */
    char *base = rec_accounts_sql(c->cfg, 0);
    char *sql = xasprintf("%s ORDER BY a.account_id LIMIT %d", base, REC_PLAN_CHUNK);
    char *ids_sql = rec_account_ids_sql(c->cfg);
    char qerr[512];
    PGresult *res = pg_exec(db, sql, 0, NULL, qerr, sizeof qerr);
    PGresult *ids = res ? pg_exec(db, ids_sql, 0, NULL, qerr, sizeof qerr) : NULL;
    free(base);
    free(sql);
    free(ids_sql);
    if (res == NULL || ids == NULL) {
        if (res)
            PQclear(res);
        return 0; /* the database's problem, not the rules' */
    }
    acct_rows rows;
    rows_from_pgresult(&rows, res);
    strmap known = STRMAP_BORROWED, sample = STRMAP_BORROWED, shown = STRMAP_BORROWED;
    for (int i = 0; i < PQntuples(ids); i++)
        strmap_put(&known, PQgetvalue(ids, i, 0), (void *)1);
    int id_col = rows_column(&rows, "account_id");
    for (int i = 0; i < rows.nrows; i++)
        if (rows_value(&rows, i, id_col))
            strmap_put(&sample, rows_value(&rows, i, id_col), (void *)1);
    size_t it = 0;
    void *v;
    while (strmap_next(cache_deployments(c->cache), &it, NULL, &v)) {
        obs_deploy *d = v;
        if (d->account_id == NULL || strmap_get(&sample, d->account_id) || !strmap_get(&known, d->account_id))
            strmap_put(&shown, d->name, d);
    }
    plan_input in = {&rows, &shown, 1, -1, 0, NULL, REC_PLAN_CHUNK, NULL, 0};
    int rc = rec_check_plan(r, candidate, c->cfg, &in, err, errlen);
    strmap_free(&shown);
    strmap_free(&sample);
    strmap_free(&known);
    rows_free(&rows);
    PQclear(ids);
    PQclear(res);
    return rc;
}

static void reload_rules(ctl *c)
{
    char version[65], err[1024];
    if (luahost_dir_version(c->cfg->rules_dir, version, err, sizeof err) == 0 &&
        strcmp(version, rules_version(c->rules)) == 0 && rules_last_error(c->rules) == NULL)
        return; /* unchanged */
    uint64_t t0 = util_now_ms();
    if (rules_reload(c->rules, NULL, err, sizeof err) == 0) {
        metrics_add("sync_airbnb_operator_rules_reloads_total", "result=\"success\"", 1);
        char ms[24];
        snprintf(ms, sizeof ms, "%llu", (unsigned long long)(util_now_ms() - t0));
        log_info("rules in effect", "version", rules_version(c->rules), "reload_ms", ms, NULL);
        trail_rules_event(&c->trail, "RulesReloaded",
                          "new rules loaded, self-checked and planned over the live accounts", 0);
        watch_kick_full(c->watch);
        rollout_step(c); /* a rendered change starts a rollout before that pass */
    } else {
        metrics_add("sync_airbnb_operator_rules_reloads_total", "result=\"failure\"", 1);
        char msg[1200];
        snprintf(msg, sizeof msg, "rules rejected, previous rules kept: %s", err);
        trail_rules_event(&c->trail, "RulesRejected", msg, 1);
    }
    publish(c);
}

static void on_reload_timer(uv_timer_t *t)
{
    reload_rules(t->data);
}

static void on_rules_changed(uv_fs_event_t *h, const char *filename, int events, int status)
{
    ctl *c = h->data;
    (void)filename, (void)events, (void)status;
    /* Debounce: a ConfigMap update is several renames in a row. */
    uv_timer_start(&c->reload_timer, on_reload_timer, 50, 0);
}

/* ---- leader ------------------------------------------------------------- */

static void on_leader_change(int leading, void *ud)
{
    (void)leading;
    uv_async_send(&((ctl *)ud)->leader_async);
}

static void on_leader_async(uv_async_t *a)
{
    ctl *c = a->data;
    int now = is_leader(c);
    if (now != c->was_leader) {
        log_info(now ? "became leader; reconciling" : "not the leader; standing by", NULL);
        c->was_leader = now;
        rollout_invalidate(c->rollout); /* the rollout goes on from its stored state */
        wstatus_leader(c->ws, now);
        if (now)
            watch_kick_full(c->watch);
        else
            kube_async_cancel_writes(c->ka); /* queued writes and their retries */
    }
    /* Set every time, so a standby exports 0 instead of no series at all. */
    metrics_set("sync_airbnb_operator_leader", NULL, now);
    publish(c);
}

/* ---- timers, readiness, shutdown ------------------------------------------ */

/* A resync during a backlog (a convergence) waits until the backlog and its
 * held Events are done (on_tick): every account of it is being planned by id
 * anyway, and a full pass now would hold every row of the table while
 * thousands of Events wait, the peak of the process's memory. Postponed, never
 * dropped: after MAX_RESYNCS_POSTPONED it runs regardless. */
static int resync_must_wait(const ctl *c)
{
    return (watch_backlog_left(c->watch) || c->trail.events.held > 0) && c->resyncs_postponed < MAX_RESYNCS_POSTPONED;
}

static void on_resync(uv_timer_t *t)
{
    ctl *c = t->data;
    reload_rules(c); /* the fallback when a file event was missed */
    if (resync_must_wait(c)) {
        c->resyncs_postponed++;
        return;
    }
    c->resyncs_postponed = 0;
    watch_kick_full(c->watch);
}

static void kube_stat(const char *verb, long code, unsigned long count, void *ud)
{
    (void)ud;
    char labels[64];
    snprintf(labels, sizeof labels, "verb=\"%s\",code=\"%ld\"", verb, code);
    metrics_set("sync_airbnb_operator_api_requests_total", labels, (double)count);
}

/* An expectation that lapsed: its echo never came (expect.h). */
static void on_expectation_lapsed(const char *account_id, const char *name, void *ud)
{
    ctl *c = ud;
    log_info("the watch never showed our write; planning from the cache again", "deployment", name, NULL);
    if (account_id && strmap_del(&c->requeue, account_id))
        watch_enqueue(c->watch, account_id);
}

/* The rollout's turn (rollout.h): start, judge, advance, halt; the accounts
 * it reaches or rolls back are planned again. */
static void rollout_step(ctl *c)
{
    if (c->stopping || !watch_db_up(c->watch) || !watch_schema_ok(c->watch) || c->cache == NULL ||
        !cache_synced(c->cache) || !is_leader(c)) {
        uv_idle_stop(&c->search_idle); /* the tick resumes a search */
        return;
    }
    strmap again = STRMAP_INIT;
    int full = rollout_tick(c->rollout, watch_db(c->watch), c->rules, c->cache, &again);
    size_t it = 0;
    const char *k;
    while (strmap_next(&again, &it, &k, NULL))
        watch_enqueue(c->watch, k);
    strmap_free(&again);
    if (full)
        watch_kick_full(c->watch);
    /* The next slice in the next turn of the loop, after its I/O: passes
     * react in between. (Not a 0 ms timer: libuv runs a timer restarted
     * from its own callback again before it polls.) */
    if (rollout_searching(c->rollout))
        uv_idle_start(&c->search_idle, on_search_idle);
    else
        uv_idle_stop(&c->search_idle);
}

static void on_search_idle(uv_idle_t *h)
{
    rollout_step(h->data);
}

/* Where the memory is (debug): the heap malloc holds and uses, the
 * long-lived blocks' pages, the rules' Lua heap, and what the cache holds. */
static void log_memory(const ctl *c)
{
    struct mallinfo2 mi = mallinfo2();
    size_t long_mapped, long_used;
    xlong_stats(&long_mapped, &long_used);
    long rss_pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%*s %ld", &rss_pages) != 1)
            rss_pages = 0;
        fclose(f);
    }
    char v[8][24];
    snprintf(v[0], sizeof v[0], "%ld", rss_pages * (sysconf(_SC_PAGESIZE) / 1024));
    snprintf(v[1], sizeof v[1], "%zu", (mi.arena + mi.hblkhd) / 1024);
    snprintf(v[2], sizeof v[2], "%zu", (mi.uordblks + mi.hblkhd) / 1024);
    snprintf(v[3], sizeof v[3], "%zu", long_mapped / 1024);
    snprintf(v[4], sizeof v[4], "%zu", long_used / 1024);
    snprintf(v[5], sizeof v[5], "%d", rules_lua_kib(c->rules));
    snprintf(v[6], sizeof v[6], "%zu", cache_deployments(c->cache)->len);
    snprintf(v[7], sizeof v[7], "%zu", cache_pods(c->cache)->len);
    log_debug("memory", "rss_kib", v[0], "malloc_kib", v[1], "malloc_used_kib", v[2], "long_kib", v[3],
              "long_used_kib", v[4], "lua_kib", v[5], "deployments", v[6], "pods", v[7], NULL);
}

/* Log line, audit row, Event beside the rules reload's (the rules ConfigMap,
 * else the Lease) and on the worker's Deployment. */
static void report_rollout(void *ud, const char *event, const char *name, const char *message, int warning)
{
    ctl *c = ud;
    log_msg(warning ? LOG_WARN : LOG_INFO, "rollout", "event", event, "deployment", name ? name : "", "detail",
            message, NULL);
    trail_note(&c->trail, "rollout", message);
    trail_rules_event(&c->trail, event, message, warning);
    if (name)
        event_queue_post(&c->trail.events, "apps/v1", "Deployment", name, NULL, event, message, NULL, warning);
}

static void on_tick(uv_timer_t *t)
{
    ctl *c = t->data;
    health_beat(); /* the loop is turning: /healthz and the Lease depend on it */
    rollout_step(c);
    if (c->resyncs_postponed > 0 && !resync_must_wait(c) && writer_inflight(c->writer) == 0) {
        c->resyncs_postponed = 0;
        watch_kick_full(c->watch);
    }
    uint64_t now = util_now_ms();
    watch_tick(c->watch, now); /* accounts whose write failed come back when their backoff expires */
    expect_expire(&c->expect, now, on_expectation_lapsed, c);
    if (c->leader && c->was_leader != is_leader(c))
        on_leader_async(&c->leader_async);
    if (writer_inflight(c->writer) == 0) /* nothing to make way for (e.g. the database is away) */
        event_queue_flush(&c->trail.events);
    kube_stats_foreach(kube_stat, NULL);
    metrics_set_queue_depth(watch_queued(c->watch) + c->requeue.len, writer_inflight(c->writer));
    /* Hand freed heap back after busy seconds (parsed watch events and
     * rendered Deployments are many small, short-lived allocations). */
    if (c->passes != c->trimmed_at_passes) {
        c->trimmed_at_passes = c->passes;
        malloc_trim(0);
        if (log_enabled(LOG_DEBUG) && now - c->memory_logged_ms >= 10000) {
            c->memory_logged_ms = now;
            log_memory(c);
        }
    }
    publish(c);
}

/* /readyz carries short codes, never error text (DESIGN.md §5.4: texts that
 * leave the process can quote a credential or the database password); the
 * text is in the log, the audit row and the Event. */
static const char *pass_error_code(const char *err)
{
    if (err == NULL)
        return NULL;
    if (strncmp(err, "reading the accounts failed", 27) == 0 || strncmp(err, "accounts query has no column", 28) == 0)
        return "accounts_unreadable";
    return "plan_failed";
}

/* The /readyz document, with every check whatever the state (start-up
 * included): ready, database, schema, kubernetes, rules, leader,
 * last_reconcile, holds, inflight, expected. */
static char *readiness(ctl *c, int *ready_out)
{
    int db_up = c->watch && watch_db_up(c->watch);
    int schema_ok = c->watch && watch_schema_ok(c->watch);
    const char *schema_error = c->watch ? watch_schema_error(c->watch) : NULL;
    int synced = c->cache && cache_synced(c->cache);
    int rules_ok = rules_host(c->rules) != NULL;
    /* A pass that cannot read the accounts (table missing, wrong type) is
     * not doing its job: not ready, with the reason under last_reconcile. */
    int ready = db_up && schema_ok && synced && rules_ok && !c->stopping && c->trail.pass_error == NULL;
    char holder[256] = "";
    if (c->leader)
        leader_holder(c->leader, holder, sizeof holder);
    /* A code, not the text (the log has it): which of the two waits this is. */
    const char *schema_reason = NULL;
    if (schema_error)
        schema_reason = strncmp(schema_error, MIGRATE_WAITING_FOR_ACCOUNTS, strlen(MIGRATE_WAITING_FOR_ACCOUNTS)) == 0
                            ? "waiting_for_accounts_table" : "waiting_for_migrations";
    buf b = {0};
    json_out o;
    jo_init(&o, &b);
    jo_object(&o);
    jo_kbool(&o, "ready", ready);
    jo_key(&o, "checks");
    jo_object(&o);
    jo_key(&o, "database");
    jo_object(&o);
    jo_kbool(&o, "ok", db_up);
    jo_kstr(&o, "error", c->watch && watch_db_error(c->watch) ? "unavailable" : NULL);
    jo_end(&o);
    jo_key(&o, "schema");
    jo_object(&o);
    jo_kbool(&o, "at_head", schema_ok);
    jo_kstr(&o, "reason", schema_reason);
    jo_end(&o);
    jo_key(&o, "kubernetes");
    jo_object(&o);
    jo_kbool(&o, "synced", synced);
    jo_kbool(&o, "watching", c->cache && cache_watching(c->cache));
    jo_kstr(&o, "error", c->cache && cache_last_error(c->cache) ? "api_error" : NULL);
    jo_end(&o);
    jo_key(&o, "rules");
    jo_object(&o);
    jo_kstr(&o, "version", rules_version(c->rules));
    jo_kstr(&o, "last_error", rules_last_error(c->rules) ? "rejected" : NULL);
    jo_kint(&o, "reloads_ok", (long long)rules_reload_count(c->rules, 1));
    jo_kint(&o, "reloads_failed", (long long)rules_reload_count(c->rules, 0));
    jo_end(&o);
    jo_key(&o, "leader");
    jo_object(&o);
    jo_kbool(&o, "is_leader", is_leader(c));
    jo_kstr(&o, "identity", c->cfg->identity);
    jo_kstr(&o, "holder", holder);
    jo_end(&o);
    jo_key(&o, "last_reconcile");
    jo_object(&o);
    jo_kint(&o, "passes", (long long)c->passes);
    jo_kint(&o, "at_unix_ms", (long long)c->last_pass_wall_ms);
    jo_key(&o, "duration_seconds");
    jo_double(&o, c->last_pass_seconds);
    jo_kstr(&o, "result", c->last_result[0] ? c->last_result : NULL);
    jo_kstr(&o, "error", pass_error_code(c->trail.pass_error));
    jo_end(&o);
    jo_key(&o, "holds");
    jo_object(&o);
    jo_kbool(&o, "active", c->held_deletes > 0);
    jo_kint(&o, "held_deletes", c->held_deletes);
    jo_kstr(&o, "reason", c->hold_reason);
    jo_end(&o);
    jo_kint(&o, "inflight", c->writer ? (long long)writer_inflight(c->writer) : 0);
    jo_kint(&o, "expected", (long long)expect_count(&c->expect));
    jo_key(&o, "rollout");
    rollout_json(c->rollout, &o);
    jo_end(&o); /* checks */
    jo_end(&o);
    *ready_out = ready;
    return buf_steal(&b);
}

static void publish(ctl *c)
{
    if (c->cache) {
        metrics_set("sync_airbnb_operator_workers", "state=\"present\"", (double)c->workers_present);
        metrics_set("sync_airbnb_operator_workers", "state=\"ready\"", (double)c->workers_ready);
        metrics_set("sync_airbnb_operator_workers", "state=\"paused\"", (double)c->workers_paused);
    }
    if (c->health == NULL)
        return;
    int ready;
    char *doc = readiness(c, &ready);
    health_publish(c->health, ready, doc);
    free(doc);
}

static void on_db_changed(void *ud)
{
    ctl *c = ud;
    if (c->watch && !watch_db_up(c->watch))
        rollout_invalidate(c->rollout); /* read the state again once the database is back */
    publish(c);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_drain(uv_timer_t *t)
{
    ctl *c = t->data;
    int queued = 0, inflight = 0, watches = 0;
    kube_async_counts(c->ka, &queued, &inflight, &watches);
    if ((writer_inflight(c->writer) > 0 || c->trail.events.head || queued > 0 || inflight > 0) &&
        util_now_ms() < c->stop_deadline)
        return; /* finish what was sent */
    uv_timer_stop(t);
    uv_stop(&c->loop);
}

static void on_signal(uv_signal_t *s, int signum)
{
    ctl *c = s->data;
    if (c->stopping)
        return;
    log_info("signal received; finishing in-flight work", "signal", signum == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
    c->stopping = 1;
    c->stop_deadline = util_now_ms() + SHUTDOWN_BOUND_MS;
    event_queue_flush(&c->trail.events);
    uv_timer_stop(&c->resync_timer);
    uv_idle_stop(&c->search_idle);
    watch_stop(c->watch);
    publish(c);
    uv_timer_start(&c->drain_timer, on_drain, 0, 20);
}

static void declare_metrics(void)
{
    metrics_declare("sync_airbnb_operator_reconcile_actions_total", METRICS_COUNTER,
                    "Reconcile actions by result (create, update, delete, hold, error).");
    metrics_declare("sync_airbnb_operator_reconcile_passes_total", METRICS_COUNTER, "Reconcile passes by kind.");
    metrics_declare("sync_airbnb_operator_accounts_planned_total", METRICS_COUNTER,
                    "Accounts handed to the rules' plan() (the settled ones are not).");
    metrics_declare("sync_airbnb_operator_settled_accounts", METRICS_GAUGE,
                    "Accounts whose input the last plans left alone (the settled set).");
    metrics_declare("sync_airbnb_operator_reconcile_duration_seconds", METRICS_HISTOGRAM,
                    "Duration of a reconcile pass (read, plan, dispatch).");
    metrics_declare("sync_airbnb_operator_api_requests_total", METRICS_COUNTER,
                    "Kubernetes API requests by verb and HTTP status (0: no response).");
    metrics_declare("sync_airbnb_operator_db_errors_total", METRICS_COUNTER, "Failed database reads.");
    metrics_declare("sync_airbnb_operator_audit_failures_total", METRICS_COUNTER, "audit_log rows that could not be written.");
    metrics_declare("sync_airbnb_operator_notifications_total", METRICS_COUNTER, "NOTIFYs received.");
    metrics_declare("sync_airbnb_operator_full_notifications_deferred_total", METRICS_COUNTER,
                    "NOTIFY '*' folded into a later full pass (at most one per 5 s).");
    metrics_declare("sync_airbnb_operator_rules_reloads_total", METRICS_COUNTER, "Rules reloads by result.");
    metrics_declare("sync_airbnb_operator_workers", METRICS_GAUGE, "Worker Deployments: desired, present, ready, paused.");
    metrics_declare("sync_airbnb_operator_deletes_held", METRICS_GAUGE, "Deletes currently held (empty set or budget).");
    metrics_declare("sync_airbnb_operator_leader", METRICS_GAUGE, "1 when this process holds the Lease.");
    metrics_declare("sync_airbnb_operator_schema_at_head", METRICS_GAUGE, "1 when the database schema is at head.");
    rollout_declare_metrics();
    wstatus_declare_metrics();
}

int run_main(const config *cfg, int argc, char **argv)
{
    (void)argv;
    char err[1024];
    if (argc > 0) {
        fprintf(stderr, "run: unexpected argument %s\n", argv[0]);
        return 2;
    }
    if (config_require_database(cfg, err, sizeof err) < 0) {
        fprintf(stderr, "run: %s\n", err);
        return 2;
    }
    ctl *c = xcalloc(1, sizeof *c);
    c->cfg = cfg;
    int rc = 1;
    signal(SIGPIPE, SIG_IGN);
    /* Large blocks (query results, map tables) are mmapped and returned at
     * once; a fixed threshold stops glibc from raising it after each free. */
    mallopt(M_MMAP_THRESHOLD, 64 * 1024);
    declare_metrics();
    uv_loop_init(&c->loop);

    int kerr = kube_config_resolve(cfg->kubeconfig, cfg->kube_context, &c->kcfg, err, sizeof err);
    if (kerr < 0) {
        fprintf(stderr, "run: %s\n", err);
        goto out;
    }
    health_beat_init((unsigned)cfg->loop_stall_s * 1000u);
    c->rules = rules_new(cfg);
    c->rollout = rollout_new(cfg, report_rollout, c);
    rules_set_check(c->rules, check_candidate, c);
    rules_keep_last_good(c->rules);
    if (rules_load_at_start(c->rules, err, sizeof err) < 0) {
        fprintf(stderr, "run: rules in %s: %s\n", cfg->rules_dir, err);
        goto out;
    }
    if (cfg->health_addr && *cfg->health_addr) {
        int ready;
        char *first = readiness(c, &ready); /* every check from the first answer (not ready yet) */
        c->health = health_start(cfg->health_addr, first, err, sizeof err);
        free(first);
        if (c->health == NULL) {
            fprintf(stderr, "run: %s\n", err);
            goto out;
        }
        char port[16];
        snprintf(port, sizeof port, "%d", health_port(c->health));
        log_info("health endpoints listening", "addr", cfg->health_addr, "port", port, NULL);
    }
    c->kc = kube_client_new(&c->kcfg, err, sizeof err);
    if (c->kc == NULL) {
        fprintf(stderr, "run: %s\n", err);
        goto out;
    }
    kube_limits lim = {.qps = cfg->kube_qps, .burst = cfg->kube_burst,
                       .max_inflight = cfg->kube_max_inflight};
    c->ka = kube_async_new(c->kc, &c->loop, &lim);
    kube_async_set_write_gate(c->ka, may_write, c); /* leadership before every send, retries too */
    trail_init(&c->trail, &c->loop, cfg, c->ka, events_hold, live_db, c);
    c->trail.uid_of = deployment_uid;
    c->writer = writer_new(c->ka, cfg, may_write, on_write_outcome, c);

    uv_timer_init(&c->loop, &c->reload_timer);
    uv_timer_init(&c->loop, &c->resync_timer);
    uv_timer_init(&c->loop, &c->tick_timer);
    uv_timer_init(&c->loop, &c->drain_timer);
    uv_idle_init(&c->loop, &c->search_idle);
    c->reload_timer.data = c->resync_timer.data = c->tick_timer.data = c->drain_timer.data = c;
    c->search_idle.data = c;
    uv_signal_init(&c->loop, &c->sigterm);
    uv_signal_init(&c->loop, &c->sigint);
    c->sigterm.data = c->sigint.data = c;
    uv_signal_start(&c->sigterm, on_signal, SIGTERM);
    uv_signal_start(&c->sigint, on_signal, SIGINT);
    uv_async_init(&c->loop, &c->leader_async, on_leader_async);
    c->leader_async.data = c;
    uv_fs_event_init(&c->loop, &c->rules_watch);
    c->rules_watch.data = c;
    if (uv_fs_event_start(&c->rules_watch, on_rules_changed, cfg->rules_dir, 0) < 0)
        log_warn("cannot watch the rules directory; changes are picked up at each resync", "dir", cfg->rules_dir, NULL);

    c->delete_tokens = cfg->delete_budget;
    c->delete_refill_ms = util_now_ms();
    c->ws = wstatus_new(&c->loop, cfg, NULL, may_write, c);
    c->cache = cache_start(&c->loop, c->ka, cfg->namespace, on_cache_change, c);
    wstatus_set_cache(c->ws, c->cache);
    watch_hooks hooks = {.pass = pass, .changed = on_db_changed, .ud = c};
    c->watch = watch_start(&c->loop, cfg, &hooks);

    c->leader = leader_start(cfg, &c->kcfg, on_leader_change, c, err, sizeof err);
    if (c->leader == NULL) {
        fprintf(stderr, "run: leader election: %s\n", err);
        goto out;
    }
    on_leader_async(&c->leader_async);
    uv_timer_start(&c->resync_timer, on_resync, (uint64_t)cfg->resync_interval_s * 1000,
                   (uint64_t)cfg->resync_interval_s * 1000);
    uv_timer_start(&c->tick_timer, on_tick, 1000, 1000);
    log_info("operator started", "namespace", cfg->namespace, "rules", cfg->rules_dir, "version", SAO_VERSION,
             "identity", cfg->identity, NULL);
    publish(c);
    health_beat();
    uv_run(&c->loop, UV_RUN_DEFAULT);
    rc = 0;
    if (watch_db_up(c->watch) && watch_schema_ok(c->watch))
        settled_save(c, watch_db(c->watch), 1); /* before the lease goes: the next leader reads it */
    log_info("stopping: releasing the lease", NULL);

out:
    if (c->leader)
        leader_stop(c->leader, 1);
    health_stop(c->health);
    if (c->cache)
        cache_free(c->cache);
    writer_free(c->writer); /* and the records of requests still in flight */
    if (c->ka) {
        trail_free(&c->trail); /* Events never posted (no loop left): only when start-up failed */
        kube_async_free(c->ka);
        rules_event_free_pending();
    }
    watch_close(c->watch); /* own allocation: close_walk would close it without freeing it */
    uv_walk(&c->loop, close_walk, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    uv_loop_close(&c->loop);
    wstatus_free(c->ws); /* after the loop: its write in flight has finished */
    kube_client_free(c->kc);
    kube_config_free(&c->kcfg);
    if (c->ka)
        trail_flush(&c->trail); /* what the last iteration queued */
    watch_free(c->watch);
    rules_free(c->rules);
    rollout_free(c->rollout);
    strmap_free(&c->requeue);
    expect_free(&c->expect);
    rec_settled_free(&c->settled);
    safety_window_free(&c->window);
    free(c->hold_reason);
    free(c);
    metrics_reset();
    if (rc == 0)
        log_info("stopped", NULL);
    return rc;
}
