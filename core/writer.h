/* writer: sends the actions that passed the safety filter to the API server
 * and turns every answer into one typed outcome. It builds every request
 * (paths, field manager, DeleteOptions with the uid precondition), follows
 * a create whose answer was lost (VERIFY), and moves the fields our POST
 * still owns to our apply before an update (ownership.h). It reports
 * nothing and keeps no cache: the outcome goes to the controller, which
 * hands it to the trail (trail.h) and to the expectations (expect.h).
 *
 * Creates are POSTs (not server-side apply): a create must fail on a name
 * that exists (409), so that an unmanaged Deployment of that name is never
 * taken over; updates are server-side applies with force, so that every
 * field the rules render is ours and a field they drop is removed. */
#ifndef WRITER_H
#define WRITER_H

#include <stddef.h>

#include "cache.h"
#include "config.h"
#include "kube.h"
#include "reconcile.h"
#include "strmap.h"

typedef enum {
    WRITE_CREATED,
    WRITE_UPDATED,
    WRITE_DELETED,
    WRITE_ALREADY_OURS,       /* a create whose answer was lost had been made (found by a GET) */
    WRITE_UNMANAGED_CONFLICT, /* a create met a Deployment of that name we do not manage,
                               * or one of ours that belongs to another account */
    WRITE_GONE,               /* a delete (or an update's first step) found it gone already */
    WRITE_OWNERSHIP_MOVED,    /* an update's first step: our POST's fields moved to our apply */
    WRITE_RETRY_LATER,        /* not done now: leadership lost before sending, or the
                               * ownership step failed (backoff set) */
    WRITE_FAILED,             /* reason says why; the account backs off */
} write_result;

typedef struct write_outcome {
    write_result result;
    act_kind kind;                    /* the action: create, update or delete */
    const char *account_id;           /* may be NULL */
    const char *name;                 /* the Deployment */
    const char *reason;               /* success: the action's reason; else what went wrong */
    const char *uid;                  /* the object's uid when the answer had one */
    unsigned long long resource_version; /* of the object the write produced (0: unknown) */
    long applied_generation;          /* > 0: the generation our apply produced */
    int backoff;                      /* RETRY_LATER: 1 when the account should back off */
    int replan;                       /* 1: plan the account again (an update waits for it) */
} write_outcome;

typedef void (*writer_done_fn)(const write_outcome *o, void *ud);

typedef struct writer writer;

/* may_write(ud) is checked before sending (the kube_async write gate checks
 * it again before every attempt); done(o, ud) gets every outcome. */
writer *writer_new(kube_async *ka, const config *cfg, int (*may_write)(void *ud), writer_done_fn done,
                   void *ud);
/* Sends the write of a (create, update or delete). live: the cached object
 * of an update (NULL otherwise). Returns 1 when a request went out, 0 when
 * nothing was sent (leadership lost). */
int writer_send(writer *w, const action *a, const obs_deploy *live);
/* 1 while a write of name is in flight. */
int writer_busy(const writer *w, const char *name);
/* Writes in flight. */
size_t writer_inflight(const writer *w);
/* Adds the account ids with a write in flight to ids (STRMAP_BORROWED). */
void writer_accounts(const writer *w, strmap *ids);
/* Frees w and the records of writes still in flight (after the loop ended). */
void writer_free(writer *w);

#endif
