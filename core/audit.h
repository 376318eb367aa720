/* audit: audit_log rows and Kubernetes Events for the operator's actions. */
#ifndef AUDIT_H
#define AUDIT_H

#include "kube.h"
#include "pg.h"

/* Writes one row to sync_airbnb_operator.audit_log (action, account_id,
 * deployment, reason, actor). db NULL (database away) counts a failure.
 * Returns 0 or -1 (logged, counted in sync_airbnb_operator_audit_failures_total). */
int audit_write(pg_conn *db, const char *actor, const char *what, const char *account_id,
                const char *deployment, const char *reason);

/* Posts a core/v1 Event about the object (api_version, kind, name, uid may
 * be NULL) in namespace ns, asynchronously; failures are logged at debug. */
void event_post(kube_async *ka, const char *ns, const char *identity, int timeout_ms,
                const char *api_version, const char *kind, const char *name, const char *uid,
                const char *reason, const char *message, int warning);

#endif
