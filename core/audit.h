/* audit: audit_log rows and Kubernetes Events for the operator's actions. */
#ifndef AUDIT_H
#define AUDIT_H

#include "kube.h"
#include "pg.h"
#include "strmap.h"

#include <time.h>

/* Writes one row to sync_airbnb_operator.audit_log (action, account_id,
 * deployment, reason, actor). db NULL (database away) counts a failure.
 * Returns 0 or -1 (logged, counted in sync_airbnb_operator_audit_failures_total). */
int audit_write(pg_conn *db, const char *actor, const char *what, const char *account_id,
                const char *deployment, const char *reason);

/* Rows waiting to be written together: the loop queues the rows of what
 * finished in one iteration and writes them with one multi-row INSERT right
 * after, instead of one round trip per action. */
typedef struct audit_row audit_row;
typedef struct audit_batch {
    audit_row *head, *tail;
    int n;
} audit_batch;

/* Queues a row (the strings are copied; NULL is SQL NULL). */
void audit_add(audit_batch *b, const char *what, const char *account_id, const char *deployment,
               const char *reason);
/* Writes and empties the batch, in statements of at most AUDIT_ROWS_PER_INSERT
 * rows; a statement that fails on a live connection is retried row by row, so
 * a bad row loses only itself. db NULL (database away) counts every row as a
 * failure. Returns 0, or -1 when some row was not written (logged, counted
 * per row in sync_airbnb_operator_audit_failures_total). */
int audit_flush(audit_batch *b, pg_conn *db, const char *actor);

/* Posts a core/v1 Event about the object (uid may be NULL) in namespace ns,
 * asynchronously; done (NULL: event_post_logged) gets the answer. The message
 * is message, then " (account <account_id>)" when account_id is not NULL;
 * when: the time it happened (0: now). */
void event_post(kube_async *ka, const char *ns, const char *identity, int timeout_ms,
                const char *api_version, const char *kind, const char *name, const char *uid,
                const char *reason, const char *message, const char *account_id, int warning, time_t when,
                kube_done_cb done, void *ud);
/* The default completion: logs a failure at debug level. */
void event_post_logged(const kube_response *resp, const char *terr, void *ud);

/* Events that wait while writes do. During a backlog of writes (thousands of
 * new accounts) the Events are held, then posted in order, at most
 * EVENT_QUEUE_IN_FLIGHT at a time, and only while hold() says no write is
 * waiting: they take the API server's spare capacity, never the writes'.
 * Bounded: past EVENT_QUEUE_MAX_HELD they go out regardless. */
#define EVENT_QUEUE_IN_FLIGHT 64
#define EVENT_QUEUE_MAX_HELD 20000

typedef struct held_event held_event;
typedef struct event_queue {
    kube_async *ka;            /* borrowed */
    const char *ns, *identity; /* borrowed */
    int timeout_ms;
    int (*hold)(void *ud);     /* 1 while writes wait */
    void *ud;
    held_event *head, *tail;
    int held, posting;
    strmap phrases; /* messages shared by held Events (the rules' reasons repeat) */
} event_queue;

/* Posts an Event about the object now, or holds it behind the held ones
 * (the strings are copied; api_version and kind must be constants). The
 * message as for event_post. name NULL: nothing. */
void event_queue_post(event_queue *q, const char *api_version, const char *kind, const char *name,
                      const char *uid, const char *reason, const char *message, const char *account_id,
                      int warning);
/* Feeds held Events to the client (call when hold() may have turned 0). */
void event_queue_flush(event_queue *q);
/* Drops the Events never posted. */
void event_queue_free(event_queue *q);

#endif
