/* trail: see trail.h. */
#include "trail.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "rules_event.h"
#include "util.h"

static pg_conn *live_db(trail *t)
{
    return t->db ? t->db(t->ud) : NULL;
}

static void on_audit_timer(uv_timer_t *h)
{
    trail *t = h->data;
    audit_flush(&t->audit, live_db(t), t->cfg->identity);
}

void trail_init(trail *t, uv_loop_t *loop, const config *cfg, kube_async *ka, int (*hold)(void *ud),
                pg_conn *(*db)(void *ud), void *ud)
{
    memset(t, 0, sizeof *t);
    t->cfg = cfg;
    t->db = db;
    t->ud = ud;
    uv_timer_init(loop, &t->audit_timer);
    t->audit_timer.data = t;
    t->events = (event_queue){.ka = ka, .ns = cfg->namespace, .identity = cfg->identity,
                              .timeout_ms = cfg->kube_timeout_ms, .hold = hold, .ud = ud};
}

void trail_action(trail *t, const char *what, const char *account_id, const char *name, const char *uid,
                  const char *reason, int warning)
{
    enum log_level lvl = warning ? LOG_WARN : LOG_INFO;
    if (uid == NULL && name && t->uid_of)
        uid = t->uid_of(name, t->ud);
    log_msg(lvl, what, "account_id", account_id ? account_id : "", "deployment", name ? name : "",
            "reason", reason ? reason : "", NULL);
    audit_add(&t->audit, what, account_id, name, reason);
    if (!uv_is_active((uv_handle_t *)&t->audit_timer))
        uv_timer_start(&t->audit_timer, on_audit_timer, 0, 0);
    static const struct { const char *what, *reason; } reasons[] = {
        {"create", "WorkerCreated"}, {"update", "WorkerUpdated"}, {"delete", "WorkerDeleted"},
        {"hold", "DeleteHeld"},      {"error", "ReconcileFailed"}, {"paused", "WorkerPaused"},
        {"resumed", "WorkerResumed"},
    };
    const char *ev = "Reconcile";
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (strcmp(reasons[i].what, what) == 0)
            ev = reasons[i].reason;
    event_queue_post(&t->events, "apps/v1", "Deployment", name, uid, ev, reason ? reason : what, account_id,
                     warning);
    char labels[64];
    snprintf(labels, sizeof labels, "result=\"%s\"", what);
    metrics_add("sync_airbnb_operator_reconcile_actions_total", labels, 1);
}

/* Holds and errors repeat every pass while their cause lasts: report each
 * (name, kind, reason) once, and again only when the reason changes. */
static int first_report(trail *t, const char *kind, const char *key, const char *reason)
{
    char *k = xasprintf("%s\n%s", kind, key ? key : "");
    char *old = strmap_get(&t->reported, k);
    int fresh = old == NULL || strcmp(old, reason) != 0;
    if (fresh)
        free(strmap_put(&t->reported, k, xstrdup(reason)));
    free(k);
    return fresh;
}

static void forget_report(trail *t, const char *kind, const char *key)
{
    char *k = xasprintf("%s\n%s", kind, key ? key : "");
    free(strmap_del(&t->reported, k));
    free(k);
}

void trail_planned(trail *t, const action *a)
{
    const char *kind = a->paused ? "paused" : a->kind == ACT_HOLD ? "hold" : "error";
    const char *key = a->name ? a->name : a->account_id;
    if (first_report(t, kind, key, a->reason))
        trail_action(t, kind, a->account_id, a->name, a->uid, a->reason, a->kind == ACT_ERROR);
}

void trail_pause_changed(trail *t, const char *account_id, const char *name, const char *uid, int paused)
{
    if (!paused)
        forget_report(t, "paused", name); /* paused again later: reported again */
    trail_action(t, paused ? "paused" : "resumed", account_id, name, uid,
                 paused ? "annotation sync-airbnb.io/paused=true: the operator leaves this worker alone"
                        : "annotation sync-airbnb.io/paused removed: the operator manages this worker again",
                 0);
}

void trail_sending(trail *t, const char *name)
{
    forget_report(t, "hold", name);
}

static void write_error(trail *t, const write_outcome *o)
{
    if (first_report(t, "error", o->name, o->reason))
        trail_action(t, "error", o->account_id, o->name, o->uid, o->reason, 1);
}

void trail_write(trail *t, const write_outcome *o)
{
    switch (o->result) {
    case WRITE_CREATED:
    case WRITE_UPDATED:
    case WRITE_DELETED:
    case WRITE_ALREADY_OURS: /* the create was made; its answer was lost */
        if (o->ownership_moved)
            log_info("moved the fields our create owned to our apply", "deployment", o->name, NULL);
        trail_action(t, rec_action_name(o->kind), o->account_id, o->name, o->uid, o->reason, 0);
        forget_report(t, "error", o->name);
        break;
    case WRITE_UNMANAGED_CONFLICT:
    case WRITE_FAILED:
        write_error(t, o);
        break;
    case WRITE_OWNERSHIP_MOVED:
        if (o->resource_version) /* 0: there was nothing left to move */
            log_info("moved the fields our create owned to our apply", "deployment", o->name, NULL);
        break;
    case WRITE_RETRY_LATER:
        if (o->backoff)
            log_warn("cannot move the fields our create owned to our apply; retrying later", "deployment",
                     o->name, "error", o->reason, NULL);
        else
            log_info("write not done now; the account is planned again", "deployment", o->name, "action",
                     rec_action_name(o->kind), "why", o->reason, NULL);
        break;
    case WRITE_GONE: /* nothing happened that is worth a row: it was gone already */
        break;
    }
}

void trail_pass_error(trail *t, const char *err)
{
    if (err && (t->pass_error == NULL || strcmp(t->pass_error, err) != 0)) {
        log_error("reconcile failed", "error", err, NULL);
        audit_write(live_db(t), t->cfg->identity, "error", NULL, NULL, err);
    }
    free(t->pass_error);
    t->pass_error = err ? xstrdup(err) : NULL;
}

void trail_rules_event(trail *t, const char *reason, const char *message, int warning)
{
    /* On the rules ConfigMap when it is known (rules_event.h), else on the
     * leader Lease, which lives in this namespace. */
    if (rules_event_post(t->events.ka, t->cfg, reason, message, warning) == 0)
        return;
    event_queue_post(&t->events, "coordination.k8s.io/v1", "Lease", t->cfg->lease_name, NULL, reason, message,
                     NULL, warning);
}

void trail_note(trail *t, const char *what, const char *reason)
{
    audit_write(live_db(t), t->cfg->identity, what, NULL, NULL, reason);
}

void trail_flush(trail *t)
{
    audit_flush(&t->audit, live_db(t), t->cfg->identity);
}

void trail_free(trail *t)
{
    event_queue_free(&t->events); /* never posted (no loop left): only when start-up failed */
    size_t it = 0;
    void *v;
    while (strmap_next(&t->reported, &it, NULL, &v))
        free(v);
    strmap_free(&t->reported);
    free(t->pass_error);
    t->pass_error = NULL;
}
