/* trail: the one place where what the operator did or refused becomes
 * visible (DESIGN.md §5.6): the log line, the audit_log row, the Event and
 * the metric of every create, update, delete, hold and error — the errors
 * of a whole pass included. The last stage of the pipeline (controller.h):
 * it decides nothing and changes nothing in the cluster but Events. */
#ifndef TRAIL_H
#define TRAIL_H

#include <uv.h>

#include "audit.h"
#include "config.h"
#include "reconcile.h"
#include "strmap.h"
#include "writer.h"

typedef struct trail {
    const config *cfg;
    audit_batch audit;
    uv_timer_t audit_timer; /* writes the batch at the next loop iteration */
    event_queue events;     /* held while writes wait (audit.h) */
    strmap reported;        /* "kind\nkey" → last reason: holds/errors reported once */
    pg_conn *(*db)(void *ud); /* the live connection, or NULL while the database is away */
    void *ud;
    char *pass_error; /* the last pass's error text (NULL: the last pass ran) */
    /* The uid of the Deployment name (NULL: none known), for Events whose
     * action carries none: kubectl describe deployment lists an Event only
     * when its involvedObject.uid is the Deployment's. Set after trail_init. */
    const char *(*uid_of)(const char *name, void *ud);
} trail;

/* ka: posts the Events; hold(ud): 1 while writes wait (Events are held). */
void trail_init(trail *t, uv_loop_t *loop, const config *cfg, kube_async *ka, int (*hold)(void *ud),
                pg_conn *(*db)(void *ud), void *ud);
/* Log line + audit row + Event + metric for one action (what: create,
 * update, delete, hold, error). */
void trail_action(trail *t, const char *what, const char *account_id, const char *name, const char *uid,
                  const char *reason, int warning);
/* A hold or error the plan returned: reported once per (name, reason); a
 * hold of a paused worker as "paused" (Event WorkerPaused). */
void trail_planned(trail *t, const action *a);
/* A person paused (paused 1) or resumed a worker: log, audit row, Event
 * WorkerPaused / WorkerResumed on the Deployment. */
void trail_pause_changed(trail *t, const char *account_id, const char *name, const char *uid, int paused);
/* The outcome of one write (writer.h). */
void trail_write(trail *t, const write_outcome *o);
/* A write of name is about to be sent: its hold, if any, is over. */
void trail_sending(trail *t, const char *name);
/* The error of a whole pass (NULL: the pass ran): logged and audited when
 * it changes. */
void trail_pass_error(trail *t, const char *err);
/* An Event about the rules (a reload, a rollout): on the RULES_CONFIGMAP
 * that carried them (rules_event.h), else on the leader Lease. */
void trail_rules_event(trail *t, const char *reason, const char *message, int warning);
/* An audit row written now, for what is not an action (a release of held deletes). */
void trail_note(trail *t, const char *what, const char *reason);
/* Writes the queued audit rows now (shutdown). */
void trail_flush(trail *t);
void trail_free(trail *t);

#endif
