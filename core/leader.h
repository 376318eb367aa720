/* leader: Lease-based leader election (coordination.k8s.io/v1), with
 * client-go's semantics: one Lease `lease_name` in `namespace`, a holder
 * renews it every retry period; a candidate takes it over only when the
 * holder has not changed the record for leaseDurationSeconds, judged by the
 * candidate's own monotonic clock from when it saw the record change (so
 * clock skew between nodes does not matter). Writes use the
 * resourceVersion (optimistic concurrency), so two candidates never both
 * win a takeover.
 *
 * It runs in its own thread with its own blocking kube_client: a slow main
 * loop never costs the lease, and a slow API server never blocks the main
 * loop. Every request has a timeout; while leading, no request outlives the
 * renew deadline.
 *
 * Safety: leadership is dropped (leader_is_leader() turns 0) at the latest
 * renew_deadline after the last successful renew was SENT, and the renewTime
 * it wrote cannot be judged expired by anyone before lease_duration after
 * that; config validation keeps renew_deadline < lease_duration, and the
 * difference is the margin. leader_is_leader() checks that deadline itself,
 * so it holds even if the election thread is starved.
 */
#ifndef LEADER_H
#define LEADER_H

#include <stddef.h>

#include "config.h"
#include "kube.h"

typedef struct leader leader;

/* Called with 1 when this process becomes leader and with 0 when it loses
 * leadership (renew deadline passed, or the Lease was found taken). Called
 * from the election thread: it must only do thread-safe things, e.g.
 * uv_async_send(). With cfg->leader_elect == 0 it is called once with 1 from
 * inside leader_start(). Never called after leader_stop() returned, and not
 * for the stop itself. */
typedef void (*leader_change_cb)(int is_leader, void *ud);

/* Starts the election for cfg->lease_name in cfg->namespace as cfg->identity,
 * with cfg->lease_duration_s, renew_deadline_s, retry_period_s and
 * kube_timeout_ms. Copies what it needs from cfg and kc (both may be freed
 * after the call); creates its own kube_client from kc. cb may be NULL; ud is
 * borrowed and must stay valid until leader_stop() returns.
 * cfg->leader_elect == 0 → a leader that is always leader and never touches
 * the API (kc may then be NULL). Returns NULL with a one-line err on a bad
 * configuration (no identity, renew deadline not below the lease duration,
 * kube client failure, thread creation failure). */
leader *leader_start(const config *cfg, const kube_config *kc, leader_change_cb cb, void *ud,
                     char *err, size_t errlen);

/* 1 while this process holds the Lease and the renew deadline has not
 * passed; lock-free, callable from any thread. The controller checks it
 * before every write. */
int leader_is_leader(const leader *l);

/* Copies the holder identity last observed on the Lease (empty when none or
 * not yet read) into out; returns out. Thread-safe. */
const char *leader_holder(leader *l, char *out, size_t outlen);

/* The annotation a person sets on the Lease to release deletes held for
 * exceeding DELETE_HOLD_PERCENT (any new value releases once):
 *   kubectl annotate lease sync-airbnb-operator sync-airbnb.io/release-deletes=$(date +%s) --overwrite */
#define LEADER_RELEASE_ANNOTATION "sync-airbnb.io/release-deletes"
/* Copies its value as last observed on the Lease ("" when none) into out. */
const char *leader_release_token(leader *l, char *out, size_t outlen);

/* Stops the election thread and frees l (NULL is accepted). release = 1:
 * if leader, first drops leadership, then releases the Lease (holderIdentity
 * "", leaseDurationSeconds 1, renewTime now, resourceVersion checked), so
 * another candidate takes over at its next retry; release = 0 leaves the
 * Lease to expire (like a crash). Bounded: it waits for an in-flight request
 * (at most min(kube_timeout_ms, renew_deadline)) plus the release request
 * (which never outlives the renew deadline). Call it from the thread that
 * called leader_start, once. */
void leader_stop(leader *l, int release);

#endif
