/* watch: the first stage of the pipeline (controller.h) — what tells the
 * operator that an account may need work, and the queue of that work.
 *
 *   - the database: one connection that LISTENs on sync_airbnb_accounts
 *     (the trigger NOTIFYs an account id; '*' asks for a full read, at most
 *     once per STAR_MIN_INTERVAL_MS), reconnects with backoff, and checks
 *     that the schema is at head before any pass runs;
 *   - the queue: account ids to plan in the next partial pass, or a full
 *     pass; the backlog of accounts a pass deferred (taken REC_PLAN_CHUNK at a
 *     time by id); per-account backoff after a failed write;
 *   - the pass timer: a debounced kick runs hooks.pass.
 *
 * It plans nothing and writes nothing to the cluster. */
#ifndef WATCH_H
#define WATCH_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "pg.h"

#define WATCH_CHANNEL "sync_airbnb_accounts"
#define STAR_MIN_INTERVAL_MS 5000 /* NOTIFY '*' starts at most one full pass per 5 s */

typedef struct watch_hooks {
    void (*pass)(void *ud);    /* the pass timer fired */
    void (*changed)(void *ud); /* the database state changed (readiness) */
    void *ud;
} watch_hooks;

typedef struct watch watch;

/* Starts connecting (and retrying) on loop. hooks is copied. */
watch *watch_start(uv_loop_t *loop, const config *cfg, const watch_hooks *hooks);
/* The connection while it is up, else NULL. */
pg_conn *watch_db(const watch *w);
int watch_db_up(const watch *w);
const char *watch_db_error(const watch *w);   /* NULL while up */
int watch_schema_ok(const watch *w);
const char *watch_schema_error(const watch *w); /* NULL at head */
/* A query found the connection broken: pause (no pass runs) and reconnect. */
void watch_db_lost(watch *w, const char *why);

/* Queue account_id (NULL: nothing) for the next partial pass, and kick. */
void watch_enqueue(watch *w, const char *account_id);
/* Queue it without a kick of its own (the pass that continues the backlog takes it). */
void watch_enqueue_quiet(watch *w, const char *account_id);
/* A full pass next. */
void watch_kick_full(watch *w);
/* Run the pass after ms (PASS_DEBOUNCE_MS: watch_kick); no-op when one is due. */
void watch_kick_after(watch *w, uint64_t ms);
void watch_kick(watch *w);

/* What the next pass plans. */
typedef struct watch_batch {
    int full;         /* every account; ids: those asked about by id (at most max_partial) */
    char **ids;       /* else these account ids (owned) */
    size_t n;
    int took_backlog; /* some came from the backlog */
} watch_batch;
/* Takes the queue: a full pass when one is pending or the queue holds more
 * than max_partial ids, else the queued ids and up to chunk ids of the
 * backlog. Returns 0 when there is nothing to do. */
int watch_take(watch *w, size_t max_partial, size_t chunk, watch_batch *b);
void watch_batch_free(watch_batch *b);
/* The pass read nothing: plan everything once the database answers. */
void watch_retry_full(watch *w);
/* Puts ids (each NUL-terminated, len bytes) in front of the backlog. */
void watch_defer(watch *w, const char *ids, size_t len);
/* The backlog is done. */
void watch_backlog_clear(watch *w);
int watch_backlog_left(const watch *w);
int watch_full_pending(const watch *w);
/* Account ids waiting to be planned: queued by NOTIFY plus the backlog left. */
size_t watch_queued(const watch *w);

/* A write of account_id failed: it waits (1 s doubling to 256 s, jittered)
 * before it is planned again. */
void watch_fail_later(watch *w, const char *account_id);
/* Its write went through (or its row changed): no more waiting. */
void watch_forgive(watch *w, const char *account_id);
/* 1 while account_id waits. */
int watch_backing_off(const watch *w, const char *account_id, uint64_t now_ms);
/* Queues the accounts whose wait is over (call every second). */
void watch_tick(watch *w, uint64_t now_ms);

/* Shutdown: no more kicks, no reconnects. */
void watch_stop(watch *w);
/* Before the loop's handles are closed: the socket poll (its own allocation). */
void watch_close(watch *w);
/* After the loop closed: the connection and the queue. */
void watch_free(watch *w);

#endif
