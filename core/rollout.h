/* rollout: a rules change (or a WORKER_IMAGE change) that renders existing
 * workers differently goes out in waves, gated on their pods' health, and
 * halts by itself (DESIGN.md "Rollouts", invariant 10; docs/rules.md).
 *
 * The state is one row of sync_airbnb_operator.rollout (migration
 * 006_rollout): the previous rules' files and image ("from"), the new ones
 * ("to"), the changed workers in order ("members"), the wave sizes the
 * rules' policy gave, how many members were reached, and the phase. So a
 * restarted operator or a new leader resumes where the rollout stood.
 *
 * Workers not yet reached are planned with the previous rules, kept loaded
 * here: their credential rolls and repairs render as before the change.
 * Creates use the new rules while the rollout progresses and the previous
 * ones while it is halted or aborted. Deletes are not touched.
 *
 * Only the leader calls these, from the loop thread; the database calls are
 * blocking like the pass's own. */
#ifndef ROLLOUT_H
#define ROLLOUT_H

#include <stdio.h>

#include "cache.h"
#include "config.h"
#include "json.h"
#include "pg.h"
#include "reconcile.h"
#include "rules.h"
#include "strmap.h"
#include "util.h"

typedef struct rollout rollout;

/* What the rollout tells the person: the controller logs it, writes an
 * audit row (action "rollout") and posts an Event with reason `event` where
 * the rules reload's Events go (the RULES_CONFIGMAP, else the Lease:
 * trail_rules_event) and on the Deployment `name` when not NULL. */
typedef void (*rollout_report_fn)(void *ud, const char *event, const char *name, const char *message,
                                  int warning);

/* report NULL: a read-only view (no metrics, nothing reported). */
rollout *rollout_new(const config *cfg, rollout_report_fn report, void *ud);
void rollout_free(rollout *ro);

/* Forget what was read from the database (leadership changed, the database
 * reconnected): the next rollout_tick reads the row again. */
void rollout_invalidate(rollout *ro);

/* 1 when a pass may plan: the state was read and no rollout is waiting to
 * be started for the rules in effect (a pass before that would send the new
 * rules to every worker at once). */
int rollout_ready(const rollout *ro, rules *current);

/* 1 while a rollout being started is still finding the workers it changes
 * (in slices between passes, rollout_tick). Passes go on meanwhile: each
 * first judges the workers it updates (rollout_resolve). */
int rollout_searching(const rollout *ro);

/* During the search, after a pass planned with the current rules and before
 * rollout_filter: judges the Deployments that plan updates and that were
 * not judged yet (their accounts' rows in rows, the Deployments in
 * observed, name → obs_deploy), so the filter holds on the previous rules
 * exactly the workers the new rules change. Creates and deletes need no
 * judging. 0 when not searching. -1 when they cannot be rendered (the
 * search starts again; the pass must not send its plan). */
int rollout_resolve(rollout *ro, rules *current, const acct_rows *rows, const plan_result *plan,
                    strmap *observed);

/* Once a second on the leader with the database up and the cache synced:
 * reads the state (first call, or while a rollout is under way), starts a
 * rollout when the rules or image in effect differ from the state's target
 * (finding who it changes takes many calls, a slice of about 15 ms each;
 * the controller calls it every turn of its loop meanwhile),
 * judges the current wave from the Deployments and Pods in c, advances,
 * halts or rolls back, and acts on a person's resume/abort. Account ids to
 * plan again (newly reached, rolled back) are added to *enqueue (keys
 * copied, values 1). Returns 1 when a full pass should follow (the state
 * was just read, or a rollout started or resolved: passes waited for it),
 * 0 otherwise. */
int rollout_tick(rollout *ro, pg_conn *db, rules *current, cache *c, strmap *enqueue);

/* After the pass planned with the current rules (and before it sends):
 * updates of members not reached yet, and while halted or aborted every
 * create, are planned again with the previous rules; their actions replace
 * the current rules' ones in *plan. A failure to plan them drops those
 * actions (nothing is sent for them) and is logged. */
void rollout_filter(rollout *ro, pg_conn *db, strmap *observed, plan_result *plan);

/* `plan`: what rollout_filter would make of *plan in `run` now, from the
 * stored state (read only). Nothing happens when the rules in current are
 * not the rollout's target (run would start a new rollout with them). */
void rollout_plan_filter(const config *cfg, pg_conn *db, rules *current, strmap *observed, plan_result *plan);

/* `status`: one line about the rollout from the stored state (nothing when
 * none is recorded). */
void rollout_print_summary(const config *cfg, pg_conn *db, FILE *f);

/* Calls fn for each worker the rollout changes, waiting = 1 while it runs what
 * the previous rules render and the rollout is not complete (not reached yet,
 * or aborted). */
void rollout_foreach_member(const rollout *ro, void (*fn)(const char *account_id, int waiting, void *ud), void *ud);

/* Declares the rollout's metrics (docs/operations.md). */
void rollout_declare_metrics(void);

/* The /readyz detail: a JSON object (no error text: codes and counts). */
void rollout_json(const rollout *ro, json_out *o);

/* `sync-airbnb-operator rollout [status|resume|abort]` (cli_rollout.c). */
int rollout_main(const config *cfg, int argc, char **argv);

#endif
