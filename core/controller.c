/* controller: see controller.h.
 *
 * Invariants kept here (DESIGN.md §5): no pass runs while the database is
 * unreachable, the schema is not at head, the Deployment cache has not been
 * listed, or this process is not the leader — so a database error can never
 * turn into deletes, and a standby never writes. Every write re-checks
 * leadership right before it is sent. */
#include "controller.h"

#include <lauxlib.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "audit.h"
#include "cache.h"
#include "health.h"
#include "json.h"
#include "kube.h"
#include "leader.h"
#include "log.h"
#include "metrics.h"
#include "migrate.h"
#include "ownership.h"
#include "pg.h"
#include "reconcile.h"
#include "rules.h"
#include "strmap.h"
#include "util.h"
#include "wstatus.h"

#define NOTIFY_CHANNEL "sync_airbnb_accounts"
#define PASS_DEBOUNCE_MS 5
#define MAX_PARTIAL 1000
#define FOLLOWUP_MS 20 /* delay of the pass that continues a deferred backlog */
#define PLAN_CHUNK 128 /* accounts handed to the rules per pass; the rest follow as writes drain */
#define SHUTDOWN_BOUND_MS 10000
#define STAR_MIN_INTERVAL_MS 5000 /* NOTIFY '*' starts at most one full pass per 5 s */

typedef struct ctl {
    const config *cfg;
    uv_loop_t loop;

    pg_conn *db;
    uv_poll_t *db_poll;
    int db_up, db_backoff_ms;
    uv_timer_t db_retry;
    char *db_error;
    int schema_ok;
    char *schema_error;
    uv_timer_t schema_timer;

    kube_config kcfg;
    kube_client *kc;
    kube_async *ka;
    cache *cache;
    wstatus *ws; /* worker health rows for the admin side */

    rules *rules;
    uv_fs_event_t rules_watch;
    uv_timer_t reload_timer;

    leader *leader;
    uv_async_t leader_async;
    int was_leader;

    health *health;
    uv_timer_t resync_timer, pass_timer, tick_timer, drain_timer;
    uv_timer_t audit_timer; /* writes c->audit at the next loop iteration */
    uv_timer_t star_timer;  /* a NOTIFY '*' deferred by the rate limit */
    uint64_t last_star_ms;  /* when the last NOTIFY '*' started a full pass */
    audit_batch audit;
    uv_prepare_t notify_drain;
    uv_signal_t sigterm, sigint;

    strmap pending;  /* account ids to plan in the next partial pass */
    int full_pending;
    /* Accounts a pass deferred (plan_result.deferred_ids, NUL-separated) and
     * the offset of the next one: the partial passes that follow take them
     * PLAN_CHUNK at a time by id instead of reading the whole table again. */
    buf backlog;
    size_t backlog_at;
    int resyncs_postponed; /* resyncs that came during a backlog (on_resync) */
    strmap inflight; /* Deployment name → in-flight write */
    strmap requeue;  /* account ids to plan again when their write finished */
    strmap backoff;  /* account id → struct backoff after a failed write */
    strmap reported; /* "name\naction" → last reason, so holds/errors are audited once */
    rec_settled settled; /* see plan_input.settled */

    event_queue events; /* held while writes wait (audit.h) */

    double delete_tokens;
    uint64_t delete_refill_ms;
    uint64_t *deleted_at;  /* when the deletes of the hold window were sent (ring, oldest first) */
    size_t ndeleted;
    char release_seen[128]; /* LEADER_RELEASE_ANNOTATION value already acted on */
    int held_deletes;
    char *hold_reason;

    uint64_t passes, trimmed_at_passes;
    uint64_t last_pass_wall_ms;
    double last_pass_seconds;
    char last_result[64];
    char *pass_error;
    int stopping;
    uint64_t stop_deadline;
} ctl;

typedef struct backoff {
    int failures;
    uint64_t next_ms;
} backoff;

static void kick(ctl *c);
static void kick_after(ctl *c, uint64_t ms);
static void publish(ctl *c);

static int is_leader(const ctl *c)
{
    return c->leader != NULL && leader_is_leader(c->leader);
}

/* ---- audit and events (audit.c) ----------------------------------------- */

static int backlog_left(const ctl *c)
{
    return c->backlog_at < c->backlog.len;
}

static void backlog_clear(ctl *c)
{
    buf_free(&c->backlog);
    c->backlog_at = 0;
}

static int write_backlog(const ctl *c)
{
    return c->full_pending || backlog_left(c) || c->inflight.len > 0;
}

/* Events wait while writes do (see event_queue); not once stopping. */
static int events_hold(void *ud)
{
    const ctl *c = ud;
    return write_backlog(c) && !c->stopping;
}

static void post_event_on(ctl *c, const char *api_version, const char *kind, const char *name,
                          const char *uid, const char *reason, const char *message, int warning)
{
    event_queue_post(&c->events, api_version, kind, name, uid, reason, message, NULL, warning);
}

static void on_audit_timer(uv_timer_t *t)
{
    ctl *c = t->data;
    audit_flush(&c->audit, c->db_up ? c->db : NULL, c->cfg->identity);
}

/* Log line + audit row + Event for one action outcome (DESIGN.md §5.6). */
static void report(ctl *c, const char *what, const char *account_id, const char *name,
                   const char *uid, const char *reason, int warning)
{
    enum log_level lvl = warning ? LOG_WARN : LOG_INFO;
    log_msg(lvl, what, "account_id", account_id ? account_id : "", "deployment", name ? name : "",
            "reason", reason ? reason : "", NULL);
    audit_add(&c->audit, what, account_id, name, reason);
    if (!uv_is_active((uv_handle_t *)&c->audit_timer))
        uv_timer_start(&c->audit_timer, on_audit_timer, 0, 0);
    static const struct { const char *what, *reason; } reasons[] = {
        {"create", "WorkerCreated"}, {"update", "WorkerUpdated"}, {"delete", "WorkerDeleted"},
        {"hold", "DeleteHeld"},      {"error", "ReconcileFailed"},
    };
    const char *ev = "Reconcile";
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (strcmp(reasons[i].what, what) == 0)
            ev = reasons[i].reason;
    event_queue_post(&c->events, "apps/v1", "Deployment", name, uid, ev, reason ? reason : what, account_id,
                     warning);
    char labels[64];
    snprintf(labels, sizeof labels, "result=\"%s\"", what);
    metrics_add("sync_airbnb_operator_reconcile_actions_total", labels, 1);
}

/* Holds and errors repeat every pass while their cause lasts: report each
 * (name, kind, reason) once, and again only when the reason changes. */
static int first_report(ctl *c, const char *kind, const char *key, const char *reason)
{
    char *k = xasprintf("%s\n%s", kind, key ? key : "");
    char *old = strmap_get(&c->reported, k);
    int fresh = old == NULL || strcmp(old, reason) != 0;
    if (fresh)
        free(strmap_put(&c->reported, k, xstrdup(reason)));
    free(k);
    return fresh;
}

static void forget_report(ctl *c, const char *kind, const char *key)
{
    char *k = xasprintf("%s\n%s", kind, key ? key : "");
    free(strmap_del(&c->reported, k));
    free(k);
}

/* ---- executing actions --------------------------------------------------- */

/* What a request in flight is for. A create whose outcome is uncertain (its
 * POST timed out, or got 409) is followed by a GET (VERIFY). A Deployment
 * whose fields our POST still owns gets them moved to our apply
 * (ownership.h) before its first update: a GET (OWN_GET), then a JSON patch
 * (OWN_PATCH). Not right after the create: that would double the requests
 * of a mass creation (KUBE_QPS bounds them), and until the first update
 * nothing the rules render has been dropped from the object anyway. */
enum write_stage { STAGE_WRITE, STAGE_VERIFY, STAGE_OWN_GET, STAGE_OWN_PATCH };

typedef struct write_req {
    ctl *c;
    act_kind kind;
    enum write_stage stage;
    int attempts;  /* ownership: patches tried */
    char *account_id, *name, *reason;
    char *failure; /* VERIFY: what happened to the create, reported if it did not happen */
} write_req;

static write_req *write_req_new(ctl *c, const action *a)
{
    write_req *w = xcalloc(1, sizeof *w);
    w->c = c;
    w->kind = a->kind;
    w->account_id = a->account_id ? xstrdup(a->account_id) : NULL;
    w->name = xstrdup(a->name);
    w->reason = xstrdup(a->reason);
    return w;
}

static void write_req_free(write_req *w)
{
    free(w->account_id);
    free(w->name);
    free(w->reason);
    free(w->failure);
    free(w);
}

static void enqueue(ctl *c, const char *account_id)
{
    if (account_id == NULL)
        return;
    if (strmap_get(&c->pending, account_id) == NULL)
        strmap_put(&c->pending, account_id, (void *)1);
    kick(c);
}

static void fail_later(ctl *c, const char *account_id)
{
    if (account_id == NULL)
        return;
    backoff *b = strmap_get(&c->backoff, account_id);
    if (b == NULL) {
        b = xcalloc(1, sizeof *b);
        strmap_put(&c->backoff, account_id, b);
    }
    b->failures++;
    uint64_t delay = 1000u << (b->failures < 8 ? b->failures - 1 : 8); /* 1 s .. 256 s */
    delay += (uint64_t)(rand() % 500);
    b->next_ms = util_now_ms() + delay;
}

static void on_write_done(const kube_response *resp, const char *terr, void *ud);

/* Sends w's next request (w stays in flight under its name). Returns 0, or
 * -1 when nothing was sent (leadership lost, the client closing). */
static int send_stage(write_req *w, const char *method, const char *ctype, const char *body)
{
    ctl *c = w->c;
    if (!is_leader(c))
        return -1;
    char *path = xasprintf("/apis/apps/v1/namespaces/%s/deployments/%s%s", c->cfg->namespace, w->name,
                           strcmp(method, "GET") == 0 ? "" : "?fieldManager=" OWN_FIELD_MANAGER);
    int rc = kube_async_request(c->ka, method, path, ctype, body, body ? strlen(body) : 0,
                                c->cfg->kube_timeout_ms, on_write_done, w);
    free(path);
    if (rc == 0)
        strmap_put(&c->inflight, w->name, w);
    return rc;
}

/* Moves the fields our POST owns to our apply, from obj when it is a fresh
 * copy (a create's response), else after a GET. Returns 1 if a request went
 * out for it. */
static int own_upgrade(write_req *w, const json_value *obj)
{
    if (obj == NULL) {
        w->stage = STAGE_OWN_GET;
        return send_stage(w, "GET", NULL, NULL) == 0;
    }
    char *patch = own_upgrade_patch(obj);
    if (patch == NULL)
        return 0;
    w->stage = STAGE_OWN_PATCH;
    w->attempts++;
    int sent = send_stage(w, "PATCH", "application/json-patch+json", patch) == 0;
    free(patch);
    return sent;
}

/* 1 if the object carries what only our applies put there: the managed-by
 * label and the applied-hash annotation. */
static int ours(const json_value *obj)
{
    const json_value *meta = json_get(obj, "metadata");
    const char *mb = json_string(json_path(meta, "labels", MANAGED_BY_LABEL, NULL));
    return mb && strcmp(mb, MANAGED_BY_VALUE) == 0 &&
           json_string(json_path(meta, "annotations", APPLIED_HASH_ANNOTATION, NULL)) != NULL;
}

/* A write (or a create found done by VERIFY) succeeded with this object. */
static void write_succeeded(ctl *c, write_req *w, const json_value *obj)
{
    const char *what = rec_action_name(w->kind);
    obs_deploy *d = obj ? cache_parse_deployment(obj) : NULL;
    if (w->account_id && backlog_left(c) && strmap_get(&c->pending, w->account_id) == NULL)
        /* Settle it in the pass that continues the backlog (no kick of its own). */
        strmap_put(&c->pending, w->account_id, (void *)1);
    if (d) {
        if (w->stage == STAGE_WRITE)
            d->applied_generation = d->generation;
        report(c, what, w->account_id, w->name, d->uid, w->reason, 0);
        cache_upsert_deployment(c->cache, d);
    } else {
        report(c, what, w->account_id, w->name, NULL, w->reason, 0);
    }
    wstatus_on_write(c->ws, w->account_id, NULL);
    free(strmap_del(&c->backoff, w->account_id ? w->account_id : ""));
    forget_report(c, "error", w->name);
}

static void write_failed(ctl *c, write_req *w, const char *reason)
{
    if (first_report(c, "error", w->name, reason))
        report(c, "error", w->account_id, w->name, NULL, reason, 1);
    wstatus_on_write(c->ws, w->account_id, reason);
    fail_later(c, w->account_id);
}

/* The next step of w after resp/terr. Returns 1 when w went on with another
 * request (still in flight), 0 when it is finished. */
static int write_step(ctl *c, write_req *w, const kube_response *resp, const char *terr)
{
    const char *what = rec_action_name(w->kind);
    if (resp == NULL && terr && strncmp(terr, "not the leader", 14) == 0) {
        /* The write gate refused it (leadership lost before it was sent):
         * nothing happened; the next leader plans it again. */
        log_info("write not sent: leadership lost", "deployment", w->name, "action", what, NULL);
        return 0;
    }
    int ok = resp && resp->status >= 200 && resp->status < 300;
    char err[512];
    if (resp)
        kube_response_error(resp, err, sizeof err);
    else
        snprintf(err, sizeof err, "%s", terr ? terr : "request failed");

    if (w->stage == STAGE_OWN_GET || w->stage == STAGE_OWN_PATCH) {
        json_value *obj = ok ? json_parse(resp->body, resp->len, NULL, 0) : NULL;
        int again = 0;
        if (obj && w->stage == STAGE_OWN_GET) {
            again = own_upgrade(w, obj);
        } else if (obj) {
            obs_deploy *d = cache_parse_deployment(obj);
            obs_deploy *old = d ? strmap_get(cache_deployments(c->cache), d->name) : NULL;
            if (old) { /* (gone meanwhile: the watch said so; do not bring it back) */
                /* metadata only: what was applied is still applied */
                d->applied_generation = old->applied_generation;
                cache_upsert_deployment(c->cache, d);
            } else if (d) {
                obs_deploy_free(d);
            }
            log_info("moved the fields our create owned to our apply", "deployment", w->name, NULL);
        } else if (resp && (resp->status == 409 || resp->status == 422) && w->attempts < 3) {
            again = own_upgrade(w, NULL); /* changed meanwhile: a fresh copy */
        } else if (!resp || resp->status != 404) {
            log_warn("cannot move the fields our create owned to our apply; retrying later", "deployment",
                     w->name, "error", err, NULL);
            fail_later(c, w->account_id);
        }
        json_free(obj);
        if (!again) /* the update it waited for, or whatever happened to it meanwhile
                     * (events for a name in flight are not planned) */
            enqueue(c, w->account_id);
        return again;
    }

    if (w->stage == STAGE_VERIFY) {
        json_value *obj = ok ? json_parse(resp->body, resp->len, NULL, 0) : NULL;
        int again = 0;
        if (obj && ours(obj)) {
            /* An earlier attempt did create it (the answer was lost). */
            write_succeeded(c, w, obj);
        } else if (obj) {
            char *reason = xasprintf("cannot create %s: a Deployment of that name exists and is not managed "
                                     "by sync-airbnb-operator; leaving it alone (%s)", w->name, w->failure);
            write_failed(c, w, reason);
            free(reason);
        } else {
            write_failed(c, w, w->failure); /* 404: it did not happen; or we cannot tell */
        }
        json_free(obj);
        return again;
    }

    if (ok && w->kind == ACT_DELETE) {
        cache_remove_deployment(c->cache, w->name);
        report(c, what, w->account_id, w->name, NULL, w->reason, 0);
        wstatus_on_write(c->ws, w->account_id, NULL);
        free(strmap_del(&c->backoff, w->account_id ? w->account_id : ""));
        forget_report(c, "error", w->name);
        return 0;
    }
    if (ok) {
        json_value *obj = json_parse(resp->body, resp->len, NULL, 0);
        write_succeeded(c, w, obj);
        json_free(obj);
        return 0;
    }
    if (resp && w->kind == ACT_DELETE && resp->status == 404) {
        cache_remove_deployment(c->cache, w->name); /* already gone */
        return 0;
    }
    if (w->kind == ACT_CREATE && (resp == NULL || resp->status == 409)) {
        /* A timed-out POST may have been applied, and a 409 may be its own
         * earlier attempt: look before reporting. */
        w->failure = xasprintf("create %s failed: %s", w->name, err);
        w->stage = STAGE_VERIFY;
        if (send_stage(w, "GET", NULL, NULL) == 0)
            return 1;
        write_failed(c, w, w->failure);
        return 0;
    }
    char *reason = xasprintf("%s %s failed: %s", what, w->name, err);
    write_failed(c, w, reason);
    free(reason);
    return 0;
}

static void on_write_done(const kube_response *resp, const char *terr, void *ud)
{
    write_req *w = ud;
    ctl *c = w->c;
    strmap_del(&c->inflight, w->name);
    if (write_step(c, w, resp, terr))
        return; /* w went on with its next request */
    if (w->account_id && strmap_del(&c->requeue, w->account_id))
        enqueue(c, w->account_id);
    if ((c->full_pending || backlog_left(c)) && c->inflight.len < PLAN_CHUNK / 2)
        kick_after(c, FOLLOWUP_MS);
    if (!write_backlog(c))
        event_queue_flush(&c->events);
    write_req_free(w);
    /* /readyz follows within a second (on_tick): publishing here would walk
     * the whole cache once per write. */
}

/* Sends the write of one action. Returns 1 when a request went out, 0 when
 * nothing was sent (a hold or error reported, a write already in flight,
 * the account in backoff, leadership lost). */
static int execute(ctl *c, const action *a)
{
    const config *cfg = c->cfg;
    if (a->kind == ACT_HOLD || a->kind == ACT_ERROR) {
        const char *kind = a->kind == ACT_HOLD ? "hold" : "error";
        const char *key = a->name ? a->name : a->account_id;
        if (first_report(c, kind, key, a->reason))
            report(c, kind, a->account_id, a->name, NULL, a->reason, a->kind == ACT_ERROR);
        return 0;
    }
    if (strmap_get(&c->inflight, a->name)) {
        if (a->account_id && !strmap_get(&c->requeue, a->account_id))
            strmap_put(&c->requeue, a->account_id, (void *)1);
        return 0;
    }
    if (a->account_id) {
        backoff *b = strmap_get(&c->backoff, a->account_id);
        if (b && util_now_ms() < b->next_ms)
            return 0; /* the backoff ticker re-queues it */
    }
    if (!is_leader(c))
        return 0;
    forget_report(c, "hold", a->name);
    const obs_deploy *live = a->kind == ACT_UPDATE ? strmap_get(cache_deployments(c->cache), a->name) : NULL;
    if (live && live->update_owned) {
        /* Our POST still owns fields: move them to our apply first, so that
         * this apply removes what the rules no longer render; the account
         * is planned again once that is done. */
        write_req *w = write_req_new(c, a);
        if (own_upgrade(w, NULL))
            return 1;
        write_req_free(w);
        return 0;
    }
    char *path = NULL;
    const char *method, *ctype = NULL, *body = NULL;
    char *delete_body = NULL;
    switch (a->kind) {
    case ACT_CREATE:
        method = "POST";
        path = xasprintf("/apis/apps/v1/namespaces/%s/deployments?fieldManager=sync-airbnb-operator",
                         cfg->namespace);
        body = a->body;
        break;
    case ACT_UPDATE:
        method = "PATCH";
        path = xasprintf("/apis/apps/v1/namespaces/%s/deployments/%s?fieldManager=sync-airbnb-operator&force=true",
                         cfg->namespace, a->name);
        ctype = "application/apply-patch+yaml"; /* JSON is YAML */
        body = a->body;
        break;
    default: /* ACT_DELETE: with the uid as precondition, never a replacement */
        method = "DELETE";
        path = xasprintf("/apis/apps/v1/namespaces/%s/deployments/%s", cfg->namespace, a->name);
        delete_body = a->uid ? xasprintf("{\"apiVersion\":\"v1\",\"kind\":\"DeleteOptions\",\"propagationPolicy\":\"Background\","
                                         "\"preconditions\":{\"uid\":\"%s\"}}", a->uid)
                             : xstrdup("{\"apiVersion\":\"v1\",\"kind\":\"DeleteOptions\",\"propagationPolicy\":\"Background\"}");
        body = delete_body;
        break;
    }
    write_req *w = write_req_new(c, a);
    strmap_put(&c->inflight, a->name, w);
    kube_async_request(c->ka, method, path, ctype, body, body ? strlen(body) : 0, cfg->kube_timeout_ms,
                       on_write_done, w);
    free(path);
    free(delete_body);
    return 1;
}

/* ---- the pass ------------------------------------------------------------- */

static void db_lost(ctl *c, const char *why);

static int ready_to_plan(ctl *c)
{
    return !c->stopping && c->db_up && c->schema_ok && c->cache && cache_synced(c->cache) &&
           rules_host(c->rules) != NULL && is_leader(c);
}

static void set_pass_error(ctl *c, const char *err)
{
    if (err && (c->pass_error == NULL || strcmp(c->pass_error, err) != 0)) {
        log_error("reconcile failed", "error", err, NULL);
        audit_write(c->db_up ? c->db : NULL, c->cfg->identity, "error", NULL, NULL, err);
    }
    free(c->pass_error);
    c->pass_error = err ? xstrdup(err) : NULL;
}

/* On top of the delete budget (a rate): deleting more than
 * DELETE_HOLD_PERCENT of the managed workers within the window is held until
 * a person releases it by annotating the Lease (LEADER_RELEASE_ANNOTATION).
 * A budget of 5 per 30 s would otherwise delete everything within the hour. */
static void hold_mass_deletes(ctl *c, plan_result *plan)
{
    const config *cfg = c->cfg;
    if (cfg->delete_hold_percent <= 0)
        return;
    uint64_t now = util_now_ms(), window = (uint64_t)cfg->delete_hold_window_s * 1000u;
    size_t keep = 0;
    for (size_t i = 0; i < c->ndeleted; i++)
        if (c->deleted_at[i] + window > now)
            c->deleted_at[keep++] = c->deleted_at[i];
    c->ndeleted = keep;
    char token[128] = "";
    if (c->leader)
        leader_release_token(c->leader, token, sizeof token);
    if (strcmp(token, c->release_seen) != 0) {
        if (c->ndeleted > 0 || c->held_deletes > 0) {
            log_info("deletes released by the Lease annotation", "annotation", LEADER_RELEASE_ANNOTATION, "value",
                     token, NULL);
            audit_write(c->db_up ? c->db : NULL, cfg->identity, "hold", NULL, NULL,
                        "deletes released by a person (Lease annotation " LEADER_RELEASE_ANNOTATION ")");
        }
        snprintf(c->release_seen, sizeof c->release_seen, "%s", token);
        c->ndeleted = 0; /* a fresh share */
    }
    size_t workers = c->cache ? cache_deployments(c->cache)->len : 0;
    size_t share = workers * (size_t)cfg->delete_hold_percent / 100u;
    size_t allowed = share > (size_t)cfg->delete_hold_min ? share : (size_t)cfg->delete_hold_min;
    size_t left = allowed > c->ndeleted ? allowed - c->ndeleted : 0;
    for (size_t i = 0; i < plan->n; i++) {
        action *a = &plan->actions[i];
        if (a->kind != ACT_DELETE)
            continue;
        if (left > 0) {
            left--;
            continue;
        }
        a->kind = ACT_HOLD;
        free(a->reason);
        a->reason = xasprintf("delete held: more than %d%% of the workers (%zu of %zu) deleted within %d s; "
                              "a person releases it: kubectl annotate lease %s %s=<new value> --overwrite",
                              cfg->delete_hold_percent, allowed, workers, cfg->delete_hold_window_s,
                              cfg->lease_name, LEADER_RELEASE_ANNOTATION);
        plan->held_deletes++;
        if (plan->hold_reason == NULL)
            plan->hold_reason = xstrdup(a->reason);
    }
}

static void pass(ctl *c)
{
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

    int full = c->full_pending || c->pending.len > MAX_PARTIAL;
    char **ids = NULL;
    size_t nids = 0;
    int took_backlog = 0;
    if (!full) {
        if (c->pending.len == 0 && !backlog_left(c))
            return;
        ids = xcalloc(c->pending.len + PLAN_CHUNK, sizeof *ids);
        size_t it = 0;
        const char *k;
        while (strmap_next(&c->pending, &it, &k, NULL))
            ids[nids++] = xstrdup(k);
        /* The next deferred accounts, by id: a continuation reads a few
         * hundred rows, not the whole table once per chunk. */
        for (int n = 0; n < PLAN_CHUNK && backlog_left(c); n++) {
            const char *id = c->backlog.data + c->backlog_at;
            c->backlog_at += strlen(id) + 1;
            ids[nids++] = xstrdup(id);
            took_backlog = 1;
        }
    } else {
        backlog_clear(c); /* a full pass sees every account */
    }
    strmap_free(&c->pending);
    c->full_pending = 0;

    char err[1024];
    char *sql = rec_accounts_sql(cfg, !full);
    char *arr = full ? NULL : rec_text_array((const char *const *)ids, nids);
    const char *params[] = {arr};
    PGresult *res = pg_exec(c->db, sql, full ? 0 : 1, params, err, sizeof err);
    free(sql);
    free(arr);
    long active_total = -1;
    strmap subset = STRMAP_BORROWED; /* keys: names inside the cache's items */
    strmap busy = STRMAP_BORROWED;   /* keys: the in-flight writes' account ids */
    plan_result plan = {0};
    if (res == NULL) {
        metrics_add("sync_airbnb_operator_db_errors_total", NULL, 1);
        if (!pg_ok(c->db)) {
            db_lost(c, err);
        } else {
            char *msg = xasprintf("reading the accounts failed: %s", err);
            set_pass_error(c, msg);
            free(msg);
        }
        c->full_pending = 1; /* nothing was done: plan everything once the database answers */
        goto out;
    }
    strmap *observed = cache_deployments(c->cache);
    if (!full) {
        /* Only the Deployments of the accounts asked about: the rest are not in this input. */
        strmap want = STRMAP_BORROWED;
        for (size_t i = 0; i < nids; i++)
            strmap_put(&want, ids[i], (void *)1);
        size_t it = 0;
        void *v;
        while (strmap_next(observed, &it, NULL, &v)) {
            obs_deploy *d = v;
            if (d->account_id && strmap_get(&want, d->account_id))
                strmap_put(&subset, d->name, d);
        }
        strmap_free(&want);
        observed = &subset;
        char *csql = rec_active_count_sql(cfg);
        PGresult *cres = pg_exec(c->db, csql, 0, NULL, err, sizeof err);
        free(csql);
        if (cres) {
            active_total = atol(PQgetvalue(cres, 0, 0));
            PQclear(cres);
        }
    }
    {
        size_t it = 0;
        void *v;
        while (strmap_next(&c->inflight, &it, NULL, &v))
            if (((write_req *)v)->account_id)
                strmap_put(&busy, ((write_req *)v)->account_id, (void *)1);
    }
    plan_input in = {res, observed, full, active_total, (int)c->delete_tokens, &c->settled, PLAN_CHUNK, &busy};
    if (rec_plan(c->rules, cfg, &in, &plan, err, sizeof err) < 0) {
        wstatus_on_pass(c->ws, res, full, NULL, rules_version(c->rules));
        set_pass_error(c, err);
        goto out;
    }
    set_pass_error(c, NULL);
    hold_mass_deletes(c, &plan);
    wstatus_on_pass(c->ws, res, full, &plan, rules_version(c->rules)); /* holds included */
    int writes = 0;
    for (size_t i = 0; i < plan.n; i++) {
        /* Only a delete that was sent uses the budget. */
        int sent = execute(c, &plan.actions[i]);
        if (sent && plan.actions[i].kind == ACT_DELETE) {
            c->delete_tokens -= 1;
            c->deleted_at = xrealloc(c->deleted_at, (c->ndeleted + 1) * sizeof *c->deleted_at);
            c->deleted_at[c->ndeleted++] = util_now_ms();
        }
        writes += sent;
    }
    if (plan.deferred > 0) {
        /* More accounts wait, in front of the rest of the backlog. A write
         * finishing kicks the next pass; with nothing in flight, nothing
         * would, so kick now. */
        buf next = {0};
        buf_append(&next, plan.deferred_ids, plan.deferred_ids_len);
        if (backlog_left(c))
            buf_append(&next, c->backlog.data + c->backlog_at, c->backlog.len - c->backlog_at);
        backlog_clear(c);
        c->backlog = next;
        if (c->inflight.len == 0)
            kick_after(c, FOLLOWUP_MS);
    } else if (took_backlog && !backlog_left(c)) {
        /* The backlog is done. No full pass to close it: the last chunk's
         * accounts settle at the next resync, and meanwhile the held Events
         * go out (a full pass now would hold every row of the table in
         * memory while every Event of the backlog is still held). */
        backlog_clear(c);
    }
    if (full) {
        c->held_deletes = plan.held_deletes;
        free(c->hold_reason);
        c->hold_reason = plan.hold_reason ? xstrdup(plan.hold_reason) : NULL;
        metrics_set("sync_airbnb_operator_workers", "state=\"desired\"", plan.desired);
    } else if (plan.held_deletes > c->held_deletes) {
        c->held_deletes = plan.held_deletes;
        free(c->hold_reason);
        c->hold_reason = plan.hold_reason ? xstrdup(plan.hold_reason) : NULL;
    }
    metrics_set("sync_airbnb_operator_deletes_held", NULL, c->held_deletes);
    snprintf(c->last_result, sizeof c->last_result, "%s: %d planned, %d deferred, %d writes, %d held",
             full ? "full" : "partial", plan.planned, plan.deferred, writes, plan.held_deletes);
    if (log_enabled(LOG_DEBUG)) {
        char ms[24];
        snprintf(ms, sizeof ms, "%llu", (unsigned long long)(util_now_ms() - t0));
        log_debug("reconcile pass", "kind", full ? "full" : "partial", "result", c->last_result, "ms", ms, NULL);
    }
out:
    if (res)
        PQclear(res);
    rec_plan_free(&plan);
    strmap_free(&subset);
    strmap_free(&busy);
    for (size_t i = 0; i < nids; i++)
        free(ids[i]);
    free(ids);
    c->passes++;
    c->last_pass_wall_ms = util_wall_ms();
    c->last_pass_seconds = (double)(util_now_ms() - t0) / 1000.0;
    metrics_observe("sync_airbnb_operator_reconcile_duration_seconds", full ? "kind=\"full\"" : "kind=\"partial\"",
                    c->last_pass_seconds);
    metrics_add("sync_airbnb_operator_reconcile_passes_total", full ? "kind=\"full\"" : "kind=\"partial\"", 1);
    publish(c);
}

static void on_pass_timer(uv_timer_t *t)
{
    pass(t->data);
}

static void kick_after(ctl *c, uint64_t ms)
{
    if (c->stopping || uv_is_active((uv_handle_t *)&c->pass_timer))
        return;
    uv_timer_start(&c->pass_timer, on_pass_timer, ms, 0);
}

static void kick(ctl *c)
{
    kick_after(c, PASS_DEBOUNCE_MS);
}

static void kick_full(ctl *c)
{
    c->full_pending = 1;
    kick(c);
}

/* ---- database ------------------------------------------------------------- */

static void on_star_timer(uv_timer_t *t)
{
    ctl *c = t->data;
    c->last_star_ms = util_now_ms();
    kick_full(c);
}

static void on_notify(const char *channel, const char *payload, void *ud)
{
    ctl *c = ud;
    (void)channel;
    metrics_add("sync_airbnb_operator_notifications_total", NULL, 1);
    if (strcmp(payload, "*") == 0) {
        /* "Read everything" is a full read of the table, and any database
         * role can NOTIFY: at most one per STAR_MIN_INTERVAL_MS, the rest
         * folded into the next one. */
        uint64_t now = util_now_ms();
        if (c->last_star_ms == 0 || now >= c->last_star_ms + STAR_MIN_INTERVAL_MS) {
            c->last_star_ms = now;
            kick_full(c);
        } else if (!uv_is_active((uv_handle_t *)&c->star_timer)) {
            metrics_add("sync_airbnb_operator_full_notifications_deferred_total", NULL, 1);
            uv_timer_start(&c->star_timer, on_star_timer, c->last_star_ms + STAR_MIN_INTERVAL_MS - now, 0);
        }
    } else {
        /* The row changed (perhaps fixing what made its writes fail): try
         * it now rather than after its backoff. */
        free(strmap_del(&c->backoff, payload));
        enqueue(c, payload);
    }
}

static void on_db_readable(uv_poll_t *p, int status, int events)
{
    ctl *c = p->data;
    (void)events;
    if (status < 0 || pg_consume_notifies(c->db, on_notify, c) < 0)
        db_lost(c, "connection lost");
}

static void check_schema(ctl *c);

/* A NOTIFY that arrives while a query runs is parsed by libpq and queued;
 * the socket will not signal it again. Drain the queue before the loop
 * blocks, each iteration. */
static void on_notify_drain(uv_prepare_t *h)
{
    ctl *c = h->data;
    if (c->db_up && pg_consume_notifies(c->db, on_notify, c) < 0)
        db_lost(c, "connection lost");
}

static void close_free(uv_handle_t *h)
{
    free(h);
}

static void db_unwatch(ctl *c)
{
    if (c->db_poll) {
        uv_poll_stop(c->db_poll);
        uv_close((uv_handle_t *)c->db_poll, close_free);
        c->db_poll = NULL;
    }
}

static void db_watch_socket(ctl *c)
{
    db_unwatch(c);
    int fd = pg_socket(c->db);
    if (fd < 0)
        return;
    c->db_poll = xcalloc(1, sizeof *c->db_poll);
    uv_poll_init(&c->loop, c->db_poll, fd);
    c->db_poll->data = c;
    uv_poll_start(c->db_poll, UV_READABLE, on_db_readable);
}

static void on_db_connected(ctl *c)
{
    c->db_up = 1;
    c->db_backoff_ms = 0;
    free(c->db_error);
    c->db_error = NULL;
    db_watch_socket(c);
    log_info("database connected; listening", "channel", NOTIFY_CHANNEL, NULL);
    check_schema(c);
    kick_full(c); /* notifications may have been missed */
}

static void on_db_retry(uv_timer_t *t)
{
    ctl *c = t->data;
    char err[512];
    int ok;
    if (c->db == NULL) {
        c->db = pg_connect(c->cfg->database_url, c->cfg->db_timeout_ms, err, sizeof err);
        ok = c->db && pg_listen(c->db, NOTIFY_CHANNEL, err, sizeof err) == 0;
    } else {
        ok = pg_reconnect(c->db, err, sizeof err) == 0;
    }
    if (ok) {
        on_db_connected(c);
    } else {
        db_lost(c, err);
    }
    publish(c);
}

static void db_lost(ctl *c, const char *why)
{
    if (c->db_up || c->db_error == NULL || strcmp(c->db_error, why) != 0)
        log_error("database unavailable; reconciling paused (no deletes while it is away)", "error", why, NULL);
    c->db_up = 0;
    free(c->db_error);
    c->db_error = xstrdup(why);
    db_unwatch(c);
    c->db_backoff_ms = c->db_backoff_ms ? c->db_backoff_ms * 2 : 500;
    if (c->db_backoff_ms > 30000)
        c->db_backoff_ms = 30000;
    if (!c->stopping)
        uv_timer_start(&c->db_retry, on_db_retry, (uint64_t)c->db_backoff_ms, 0);
    publish(c);
}

static void on_schema_timer(uv_timer_t *t)
{
    check_schema(t->data);
}

static void check_schema(ctl *c)
{
    if (!c->db_up)
        return;
    char err[512] = "";
    int at = migrate_at_head(c->db, c->cfg, err, sizeof err);
    if (at == 1) {
        if (!c->schema_ok)
            log_info("schema at head; reconciling", NULL);
        c->schema_ok = 1;
        free(c->schema_error);
        c->schema_error = NULL;
        metrics_set("sync_airbnb_operator_schema_at_head", NULL, 1);
        kick_full(c);
        return;
    }
    if (at < 0 && !pg_ok(c->db)) {
        db_lost(c, err);
        return;
    }
    if (c->schema_error == NULL || strcmp(c->schema_error, err) != 0)
        log_warn("waiting for the database migrations (run `sync-airbnb-operator migrate up` or the migration Job)",
                 "reason", err, NULL);
    c->schema_ok = 0;
    free(c->schema_error);
    c->schema_error = xstrdup(err);
    metrics_set("sync_airbnb_operator_schema_at_head", NULL, 0);
    uv_timer_start(&c->schema_timer, on_schema_timer, 2000, 0);
}

/* ---- cluster --------------------------------------------------------------- */

static void on_cache_change(enum cache_kind kind, const char *name, const void *old, const void *now,
                            void *ud)
{
    ctl *c = ud;
    wstatus_on_cache(c->ws, kind, name, old, now);
    if (name == NULL) { /* a list completed */
        if (kind == CACHE_DEPLOYMENT)
            kick_full(c);
        return;
    }
    if (kind != CACHE_DEPLOYMENT)
        return;
    const obs_deploy *o = old, *n = now;
    if (n == NULL) {
        /* Deleted: by us (the account is inactive: the pass finds nothing to
         * do) or by hand (it comes back). */
        if (o->account_id && strmap_get(&c->inflight, o->name) == NULL)
            enqueue(c, o->account_id);
        return;
    }
    int drifted = n->applied_generation > 0 && n->generation > n->applied_generation;
    int hash_changed = o && ((o->applied_hash == NULL) != (n->applied_hash == NULL) ||
                             (o->applied_hash && n->applied_hash && strcmp(o->applied_hash, n->applied_hash)));
    if ((drifted || hash_changed) && n->account_id && strmap_get(&c->inflight, n->name) == NULL) {
        log_info("managed Deployment changed outside the operator; restoring", "deployment", n->name,
                 "account_id", n->account_id, NULL);
        enqueue(c, n->account_id);
    }
}

/* ---- rules hot reload ------------------------------------------------------ */

/* Candidate rules must plan over the live accounts before they take effect. */
static int check_candidate(rules *r, luahost *candidate, void *ud, char *err, size_t errlen)
{
    ctl *c = ud;
    if (!c->db_up || c->cache == NULL || !cache_synced(c->cache))
        return 0; /* nothing live to plan over yet: the self-check is the gate */
    char *sql = rec_accounts_sql(c->cfg, 0);
    char qerr[512];
    PGresult *res = pg_exec(c->db, sql, 0, NULL, qerr, sizeof qerr);
    free(sql);
    if (res == NULL)
        return 0; /* the database's problem, not the rules' */
    plan_input in = {res, cache_deployments(c->cache), 1, -1, 0, NULL, PLAN_CHUNK, NULL};
    int rc = rec_check_plan(r, candidate, c->cfg, &in, err, errlen);
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
        /* Rules events hang on the leader Lease: it lives in this namespace. */
        post_event_on(c, "coordination.k8s.io/v1", "Lease", c->cfg->lease_name, NULL, "RulesReloaded",
                      "new rules loaded, self-checked and planned over the live accounts", 0);
        kick_full(c);
    } else {
        metrics_add("sync_airbnb_operator_rules_reloads_total", "result=\"failure\"", 1);
        char msg[1200];
        snprintf(msg, sizeof msg, "rules rejected, previous rules kept: %s", err);
        post_event_on(c, "coordination.k8s.io/v1", "Lease", c->cfg->lease_name, NULL, "RulesRejected", msg, 1);
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

static void on_leader_change(int is_leader, void *ud)
{
    (void)is_leader;
    uv_async_send(&((ctl *)ud)->leader_async);
}

static int may_write(void *ud)
{
    return is_leader(ud);
}

static void on_leader_async(uv_async_t *a)
{
    ctl *c = a->data;
    int now = is_leader(c);
    if (now != c->was_leader) {
        log_info(now ? "became leader; reconciling" : "not the leader; standing by", NULL);
        c->was_leader = now;
        wstatus_leader(c->ws, now);
        if (now)
            kick_full(c);
        else
            kube_async_cancel_writes(c->ka); /* queued writes and their retries */
    }
    /* Set every time, so a standby exports 0 instead of no series at all. */
    metrics_set("sync_airbnb_operator_leader", NULL, now);
    publish(c);
}

/* ---- timers, readiness, shutdown ------------------------------------------ */

#define MAX_RESYNCS_POSTPONED 4

/* A resync during a backlog (a convergence) waits until the backlog and its
 * held Events are done (on_tick): every account of it is being planned by id
 * anyway, and a full pass now would hold every row of the table while
 * thousands of Events wait, the peak of the process's memory. Postponed, never
 * dropped: after MAX_RESYNCS_POSTPONED it runs regardless. */
static int resync_must_wait(const ctl *c)
{
    return (backlog_left(c) || c->events.held > 0) && c->resyncs_postponed < MAX_RESYNCS_POSTPONED;
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
    kick_full(c);
}

static void kube_stat(const char *verb, long code, unsigned long count, void *ud)
{
    (void)ud;
    char labels[64];
    snprintf(labels, sizeof labels, "verb=\"%s\",code=\"%ld\"", verb, code);
    metrics_set("sync_airbnb_operator_api_requests_total", labels, (double)count);
}

static void on_tick(uv_timer_t *t)
{
    ctl *c = t->data;
    health_beat(); /* the loop is turning: /healthz and the Lease depend on it */
    if (c->resyncs_postponed > 0 && !resync_must_wait(c) && c->inflight.len == 0) {
        c->resyncs_postponed = 0;
        kick_full(c);
    }
    /* Accounts whose write failed come back when their backoff expires. */
    uint64_t now = util_now_ms();
    size_t it = 0;
    const char *k;
    void *v;
    while (strmap_next(&c->backoff, &it, &k, &v))
        if (((backoff *)v)->next_ms <= now && ((backoff *)v)->next_ms != 0) {
            ((backoff *)v)->next_ms = 0;
            if (strmap_get(&c->pending, k) == NULL)
                strmap_put(&c->pending, k, (void *)1);
            kick(c);
        }
    if (c->leader && c->was_leader != is_leader(c))
        on_leader_async(&c->leader_async);
    if (c->inflight.len == 0) /* nothing to make way for (e.g. the database is away) */
        event_queue_flush(&c->events);
    kube_stats_foreach(kube_stat, NULL);
    /* Hand freed heap back after busy seconds (parsed watch events and
     * rendered Deployments are many small, short-lived allocations). */
    if (c->passes != c->trimmed_at_passes) {
        c->trimmed_at_passes = c->passes;
        malloc_trim(0);
    }
    publish(c);
}

static void json_kv_str(buf *b, const char *k, const char *v)
{
    buf_json_string(b, k, strlen(k));
    buf_putc(b, ':');
    if (v)
        buf_json_string(b, v, strlen(v));
    else
        buf_puts(b, "null");
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

static void publish(ctl *c)
{
    if (c->cache) {
        int present = 0, ready = 0;
        size_t it = 0;
        void *v;
        while (strmap_next(cache_deployments(c->cache), &it, NULL, &v)) {
            present++;
            ready += ((obs_deploy *)v)->ready_replicas > 0;
        }
        metrics_set("sync_airbnb_operator_workers", "state=\"present\"", present);
        metrics_set("sync_airbnb_operator_workers", "state=\"ready\"", ready);
    }
    if (c->health == NULL)
        return;
    int synced = c->cache && cache_synced(c->cache);
    int rules_ok = rules_host(c->rules) != NULL;
    /* A pass that cannot read the accounts (table missing, wrong type) is
     * not doing its job: not ready, with the reason under last_reconcile. */
    int ready = c->db_up && c->schema_ok && synced && rules_ok && !c->stopping && c->pass_error == NULL;
    char holder[256] = "";
    if (c->leader)
        leader_holder(c->leader, holder, sizeof holder);
    buf b = {0};
    buf_printf(&b, "{\"ready\":%s,\"checks\":{\"database\":{\"ok\":%s,", ready ? "true" : "false",
               c->db_up ? "true" : "false");
    json_kv_str(&b, "error", c->db_error ? "unavailable" : NULL);
    buf_printf(&b, "},\"schema\":{\"at_head\":%s,", c->schema_ok ? "true" : "false");
    /* A code, not the text (the log has it): which of the two waits this is. */
    const char *schema_reason = NULL;
    if (c->schema_error)
        schema_reason = strncmp(c->schema_error, MIGRATE_WAITING_FOR_ACCOUNTS,
                                strlen(MIGRATE_WAITING_FOR_ACCOUNTS)) == 0
                            ? "waiting_for_accounts_table" : "waiting_for_migrations";
    json_kv_str(&b, "reason", schema_reason);
    buf_printf(&b, "},\"kubernetes\":{\"synced\":%s,\"watching\":%s,", synced ? "true" : "false",
               c->cache && cache_watching(c->cache) ? "true" : "false");
    json_kv_str(&b, "error", c->cache && cache_last_error(c->cache) ? "api_error" : NULL);
    buf_puts(&b, "},\"rules\":{");
    json_kv_str(&b, "version", rules_version(c->rules));
    buf_putc(&b, ',');
    json_kv_str(&b, "last_error", rules_last_error(c->rules) ? "rejected" : NULL);
    buf_printf(&b, ",\"reloads_ok\":%lu,\"reloads_failed\":%lu},", rules_reload_count(c->rules, 1),
               rules_reload_count(c->rules, 0));
    buf_printf(&b, "\"leader\":{\"is_leader\":%s,", c->leader && is_leader(c) ? "true" : "false");
    json_kv_str(&b, "identity", c->cfg->identity);
    buf_putc(&b, ',');
    json_kv_str(&b, "holder", holder);
    buf_printf(&b, "},\"last_reconcile\":{\"passes\":%llu,\"at_unix_ms\":%llu,\"duration_seconds\":%.6f,",
               (unsigned long long)c->passes, (unsigned long long)c->last_pass_wall_ms, c->last_pass_seconds);
    json_kv_str(&b, "result", c->last_result[0] ? c->last_result : NULL);
    buf_putc(&b, ',');
    json_kv_str(&b, "error", pass_error_code(c->pass_error));
    buf_printf(&b, "},\"holds\":{\"active\":%s,\"held_deletes\":%d,", c->held_deletes > 0 ? "true" : "false",
               c->held_deletes);
    json_kv_str(&b, "reason", c->hold_reason);
    buf_printf(&b, "},\"inflight\":%zu}}", c->inflight.len);
    health_publish(c->health, ready, b.data);
    buf_free(&b);
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
    if ((c->inflight.len > 0 || c->events.head || queued > 0 || inflight > 0) && util_now_ms() < c->stop_deadline)
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
    event_queue_flush(&c->events);
    uv_timer_stop(&c->resync_timer);
    uv_timer_stop(&c->pass_timer);
    uv_timer_stop(&c->star_timer);
    publish(c);
    uv_timer_start(&c->drain_timer, on_drain, 0, 20);
}

static void declare_metrics(void)
{
    metrics_declare("sync_airbnb_operator_reconcile_actions_total", METRICS_COUNTER,
                    "Reconcile actions by result (create, update, delete, hold, error).");
    metrics_declare("sync_airbnb_operator_reconcile_passes_total", METRICS_COUNTER, "Reconcile passes by kind.");
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
    metrics_declare("sync_airbnb_operator_workers", METRICS_GAUGE, "Worker Deployments: desired, present, ready.");
    metrics_declare("sync_airbnb_operator_deletes_held", METRICS_GAUGE, "Deletes currently held (empty set or budget).");
    metrics_declare("sync_airbnb_operator_leader", METRICS_GAUGE, "1 when this process holds the Lease.");
    metrics_declare("sync_airbnb_operator_schema_at_head", METRICS_GAUGE, "1 when the database schema is at head.");
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

    int kerr = cfg->kubeconfig ? kube_config_load_kubeconfig(cfg->kubeconfig, &c->kcfg, err, sizeof err)
                               : kube_config_in_cluster(&c->kcfg, err, sizeof err);
    if (kerr < 0) {
        fprintf(stderr, "run: %s\n", err);
        goto out;
    }
    health_beat_init((unsigned)cfg->loop_stall_s * 1000u);
    c->rules = rules_new(cfg);
    rules_set_check(c->rules, check_candidate, c);
    rules_keep_last_good(c->rules);
    if (rules_load_at_start(c->rules, err, sizeof err) < 0) {
        fprintf(stderr, "run: rules in %s: %s\n", cfg->rules_dir, err);
        goto out;
    }
    if (cfg->health_addr && *cfg->health_addr) {
        c->health = health_start(cfg->health_addr, err, sizeof err);
        if (c->health == NULL) {
            fprintf(stderr, "run: %s\n", err);
            goto out;
        }
        publish(c); /* every check present from the first answer (not ready yet) */
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
    c->events = (event_queue){.ka = c->ka, .ns = cfg->namespace, .identity = cfg->identity,
                              .timeout_ms = cfg->kube_timeout_ms, .hold = events_hold, .ud = c};

    uv_timer_init(&c->loop, &c->db_retry);
    uv_timer_init(&c->loop, &c->schema_timer);
    uv_timer_init(&c->loop, &c->reload_timer);
    uv_timer_init(&c->loop, &c->resync_timer);
    uv_timer_init(&c->loop, &c->pass_timer);
    uv_timer_init(&c->loop, &c->tick_timer);
    uv_timer_init(&c->loop, &c->drain_timer);
    uv_timer_init(&c->loop, &c->audit_timer);
    uv_timer_init(&c->loop, &c->star_timer);
    c->star_timer.data = c;
    c->db_retry.data = c->schema_timer.data = c->reload_timer.data = c->resync_timer.data = c;
    c->pass_timer.data = c->tick_timer.data = c->drain_timer.data = c->audit_timer.data = c;
    uv_signal_init(&c->loop, &c->sigterm);
    uv_signal_init(&c->loop, &c->sigint);
    c->sigterm.data = c->sigint.data = c;
    uv_signal_start(&c->sigterm, on_signal, SIGTERM);
    uv_signal_start(&c->sigint, on_signal, SIGINT);
    uv_prepare_init(&c->loop, &c->notify_drain);
    c->notify_drain.data = c;
    uv_prepare_start(&c->notify_drain, on_notify_drain);
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

    c->db = pg_connect(cfg->database_url, cfg->db_timeout_ms, err, sizeof err);
    if (c->db && pg_listen(c->db, NOTIFY_CHANNEL, err, sizeof err) == 0)
        on_db_connected(c);
    else
        db_lost(c, err);

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
    log_info("stopping: releasing the lease", NULL);

out:
    if (c->leader)
        leader_stop(c->leader, 1);
    health_stop(c->health);
    if (c->cache)
        cache_free(c->cache);
    /* write_req of requests still in flight are freed with the map below */
    size_t it = 0;
    void *v;
    while (strmap_next(&c->inflight, &it, NULL, &v))
        write_req_free(v);
    event_queue_free(&c->events); /* never posted (no loop left): only when start-up failed */
    if (c->ka)
        kube_async_free(c->ka);
    db_unwatch(c); /* own allocation: close_walk would close it without freeing it */
    uv_walk(&c->loop, close_walk, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    uv_loop_close(&c->loop);
    wstatus_free(c->ws); /* after the loop: its write in flight has finished */
    kube_client_free(c->kc);
    kube_config_free(&c->kcfg);
    audit_flush(&c->audit, c->db_up ? c->db : NULL, c->cfg->identity); /* what the last iteration queued */
    pg_close(c->db);
    rules_free(c->rules);
    strmap_free(&c->pending);
    backlog_clear(c);
    strmap_free(&c->inflight);
    strmap_free(&c->requeue);
    it = 0;
    while (strmap_next(&c->backoff, &it, NULL, &v))
        free(v);
    strmap_free(&c->backoff);
    it = 0;
    while (strmap_next(&c->reported, &it, NULL, &v))
        free(v);
    strmap_free(&c->reported);
    rec_settled_free(&c->settled);
    free(c->deleted_at);
    free(c->db_error);
    free(c->schema_error);
    free(c->hold_reason);
    free(c->pass_error);
    free(c);
    metrics_reset();
    if (rc == 0)
        log_info("stopped", NULL);
    return rc;
}
