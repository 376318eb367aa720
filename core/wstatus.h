/* wstatus: worker health, for the admin side that must never touch the
 * cluster (issue 21). One model of each account's worker -- wanted or not
 * and why, its Deployment, pod phase, readiness, restarts, credentials
 * generation in effect vs wanted, last error, the rules version that
 * rendered it -- derived by one function (wstatus_derive) that `run` (the
 * table sync_airbnb_operator.worker_status and /metrics) and `status` both
 * use, so the three never disagree.
 *
 * In `run` the model follows the watch cache and the passes; rows are written
 * by the leader only, in batches, and only when a column a reader sees
 * changed (compared with what the table holds), each batch followed by
 * NOTIFY sync_airbnb_worker_status in the same transaction. The writes run
 * on a thread of their own with their own connection: a slow or absent
 * database never blocks the loop, and the rows catch up when it returns. */
#ifndef WSTATUS_H
#define WSTATUS_H

#include <libpq-fe.h>
#include <uv.h>

#include "cache.h"
#include "config.h"
#include "reconcile.h"

#define WSTATUS_CHANNEL "sync_airbnb_worker_status"
#define WSTATUS_TABLE "sync_airbnb_operator.worker_status"
#define WSTATUS_ERROR_MAX 200 /* bytes of last_error kept (cut at a UTF-8 boundary) */

/* Why a worker is not running as wanted (the table's reason column; NULL
 * for WS_OK). In order of precedence: the first that applies is shown. */
enum wstatus_reason {
    WS_OK,
    WS_PAUSED,       /* annotation sync-airbnb.io/paused (issue 20) */
    WS_HELD,         /* its delete is held (DESIGN.md §5.2) */
    WS_ROLLOUT,      /* waiting for its rollout wave (issue 18) */
    WS_FAILING,      /* the operator's write failed, or its pod fails */
    WS_SOFT_DELETED, /* not wanted: deleted_at is set */
    WS_INACTIVE,     /* not wanted: is_active is false */
    WS_NO_ACCOUNT,   /* a managed Deployment whose account row is gone */
    WS_NREASONS
};
/* "inactive", "soft_deleted", ...; NULL for WS_OK. */
const char *wstatus_reason_name(enum wstatus_reason r);

/* The pods of one worker, summed. */
typedef struct wstatus_pods {
    int count, ready, restarts;
    const char *phase;          /* of the most advanced pod (borrowed) */
    const char *waiting_reason; /* of that pod (borrowed) */
    int rank;                   /* of that pod */
} wstatus_pods;
/* Adds one pod (borrowed for as long as s is used). */
void wstatus_pods_add(wstatus_pods *s, const obs_pod *p);

typedef struct wstatus_input {
    int account_exists, active, deleted;
    int paused, held, rollout;
    const char *error;        /* the operator's last error for the account; NULL none */
    const obs_deploy *d;      /* NULL: no Deployment */
    const wstatus_pods *pods; /* NULL: none */
} wstatus_input;

/* The reason shown for in, and (when failing) the failure text to show in
 * *failure (borrowed from in; NULL otherwise). */
enum wstatus_reason wstatus_derive(const wstatus_input *in, const char **failure);

typedef struct wstatus wstatus;

/* may_write: whether this process may write (the leader). Everything is
 * borrowed and must outlive ws; cache may be replaced by wstatus_set_cache. */
wstatus *wstatus_new(uv_loop_t *loop, const config *cfg, cache *c, int (*may_write)(void *), void *ud);
void wstatus_set_cache(wstatus *ws, cache *c);
/* Frees ws; call after the loop ran its last iteration (a write in flight
 * has finished then). */
void wstatus_free(wstatus *ws);

/* Hooks: a change of the watch cache (as cache_change_cb); one pass over
 * accounts (rows of the accounts query; full: the whole table) with its plan
 * (NULL: no plan was made); a write's outcome for an account (error NULL:
 * success). */
void wstatus_on_cache(wstatus *ws, enum cache_kind kind, const char *name, const void *old, const void *now);
void wstatus_on_pass(wstatus *ws, const PGresult *accounts, int full, const plan_result *plan,
                     const char *rules_version);
void wstatus_on_write(wstatus *ws, const char *account_id, const char *error);
/* paused: also read from the Deployment's sync-airbnb.io/paused annotation;
 * rollout: set by the controller from rollout_foreach_member. */
void wstatus_set_paused(wstatus *ws, const char *account_id, int paused);
void wstatus_set_rollout(wstatus *ws, const char *account_id, int waiting);
/* No account waits in a rollout (before the rollout's members are set again). */
void wstatus_clear_rollout(wstatus *ws);
/* Leadership changed: a new leader reads the table before writing. */
void wstatus_leader(wstatus *ws, int is_leader);
void wstatus_declare_metrics(void);

#endif
