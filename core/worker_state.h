/* worker_state: what a person sees of one worker from kubectl, and the pause.
 *
 *   sync-airbnb.io/paused: "true" on a worker Deployment (set by a person)
 *     makes the operator leave it alone: the safety filter turns every
 *     update and delete of it into a hold (reported once, as WorkerPaused:
 *     Event on the Deployment, audit row, log line); `plan` lists them,
 *     `status` and /metrics count paused workers. A paused worker of a
 *     deactivated account is reported, not deleted. Removing the annotation
 *     resumes it: the account is planned again at once, and what is pending
 *     applies.
 *
 * Pure (reads the cache's parsed objects); the hooks live in safety.c,
 * trail.c, controller.c and cli.c. */
#ifndef WORKER_STATE_H
#define WORKER_STATE_H

#include <stddef.h>

#include "cache.h"
#include "strmap.h"

#define PAUSED_ANNOTATION "sync-airbnb.io/paused"
/* Set by the operator on the object it applies (create/update), so they cost
 * no write of their own: what it last did to the worker, why, when, and
 * with which rules. */
#define LAST_ACTION_ANNOTATION "sync-airbnb.io/last-action"
#define LAST_REASON_ANNOTATION "sync-airbnb.io/last-action-reason"
#define LAST_AT_ANNOTATION "sync-airbnb.io/last-action-at"
#define RULES_VERSION_ANNOTATION "sync-airbnb.io/rules-version"

/* 1 when d carries sync-airbnb.io/paused: "true" (any other value: 0). */
int wstate_paused(const obs_deploy *d);
/* Now as RFC 3339 UTC (second precision) into out[21]. */
void wstate_now_rfc3339(char out[21]);
/* The value of annotation key (under sync-airbnb.io/) of d, or NULL. */
const char *wstate_annotation(const obs_deploy *d, const char *key);
/* Paused managed Deployments of a name → obs_deploy map. */
size_t wstate_count_paused(const strmap *deployments);
/* The reason of a paused hold for an update (delete 0) or delete (1) of
 * name; malloc'd. */
char *wstate_paused_reason(int is_delete, const char *name);

#endif
