/* rules_event: RulesReloaded / RulesRejected Events on the object a person
 * changed to change the rules: the ConfigMap RULES_DIR is mounted from
 * (RULES_CONFIGMAP, namespace/name), so `kubectl describe configmap` and
 * `kubectl get events` in its namespace show them. Its uid is read first
 * (kubectl describe matches Events by involvedObject.uid). Without
 * RULES_CONFIGMAP (a local run) they go on the leader Lease, as before. */
#ifndef RULES_EVENT_H
#define RULES_EVENT_H

#include "config.h"
#include "kube.h"

/* Posts asynchronously (a GET of the ConfigMap, then the Event). Returns 0,
 * or -1 when cfg has no RULES_CONFIGMAP (the caller posts on the Lease). */
int rules_event_post(kube_async *ka, const config *cfg, const char *reason, const char *message, int warning);
/* After kube_async_free: frees the posts whose GET was never answered
 * (kube_async_free drops requests without calling back). */
void rules_event_free_pending(void);

#endif
