/* watch: see watch.h. */
#include "watch.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "migrate.h"
#include "strmap.h"
#include "util.h"

#define PASS_DEBOUNCE_MS 5

struct watch {
    const config *cfg;
    uv_loop_t *loop;
    watch_hooks hooks;
    int stopping;

    pg_conn *db;
    uv_poll_t *db_poll; /* own allocation: closes asynchronously */
    int db_up, db_backoff_ms;
    uv_timer_t db_retry;
    char *db_error;
    int schema_ok;
    char *schema_error;
    uv_timer_t schema_timer;
    uv_prepare_t notify_drain;
    uv_timer_t star_timer; /* a NOTIFY '*' deferred by the rate limit */
    uint64_t last_star_ms; /* when the last NOTIFY '*' started a full pass */

    uv_timer_t pass_timer;
    strmap pending; /* account ids to plan in the next partial pass */
    int full_pending;
    /* Accounts a pass deferred (NUL-separated) and the offset of the next
     * one: the partial passes that follow take them a chunk at a time by id
     * instead of reading the whole table again. */
    buf backlog;
    size_t backlog_at;
    strmap backoff; /* account id → struct backoff after a failed write */
};

typedef struct backoff {
    int failures;
    uint64_t next_ms;
} backoff;

static void changed(watch *w)
{
    if (w->hooks.changed)
        w->hooks.changed(w->hooks.ud);
}

/* ---- the pass timer and the queue ----------------------------------------------- */

static void on_pass_timer(uv_timer_t *t)
{
    watch *w = t->data;
    w->hooks.pass(w->hooks.ud);
}

void watch_kick_after(watch *w, uint64_t ms)
{
    if (w->stopping || uv_is_active((uv_handle_t *)&w->pass_timer))
        return;
    uv_timer_start(&w->pass_timer, on_pass_timer, ms, 0);
}

void watch_kick(watch *w)
{
    watch_kick_after(w, PASS_DEBOUNCE_MS);
}

void watch_kick_full(watch *w)
{
    w->full_pending = 1;
    watch_kick(w);
}

void watch_enqueue_quiet(watch *w, const char *account_id)
{
    if (account_id && strmap_get(&w->pending, account_id) == NULL)
        strmap_put(&w->pending, account_id, (void *)1);
}

void watch_enqueue(watch *w, const char *account_id)
{
    if (account_id == NULL)
        return;
    watch_enqueue_quiet(w, account_id);
    watch_kick(w);
}

int watch_backlog_left(const watch *w)
{
    return w->backlog_at < w->backlog.len;
}

size_t watch_queued(const watch *w)
{
    size_t ids = w->pending.len;
    for (size_t at = w->backlog_at; at < w->backlog.len; at += strlen(w->backlog.data + at) + 1)
        ids++;
    return ids;
}

int watch_full_pending(const watch *w)
{
    return w->full_pending;
}

void watch_backlog_clear(watch *w)
{
    buf_free(&w->backlog);
    w->backlog_at = 0;
}

int watch_take(watch *w, size_t max_partial, size_t chunk, watch_batch *b)
{
    memset(b, 0, sizeof *b);
    b->full = w->full_pending || w->pending.len > max_partial;
    if (!b->full && w->pending.len == 0 && !watch_backlog_left(w))
        return 0;
    /* The ids asked about: a partial pass plans them; a full pass takes them
     * as a hint and puts them first among what it defers (a burst's
     * thousands are not kept). */
    if (w->pending.len <= max_partial) {
        b->ids = xcalloc(w->pending.len + (b->full ? 0 : chunk) + 1, sizeof *b->ids);
        size_t it = 0;
        const char *k;
        while (strmap_next(&w->pending, &it, &k, NULL))
            b->ids[b->n++] = xstrdup(k);
    }
    if (!b->full) {
        /* The next deferred accounts, by id: a continuation reads a few
         * hundred rows, not the whole table once per chunk. */
        for (size_t n = 0; n < chunk && watch_backlog_left(w); n++) {
            const char *id = w->backlog.data + w->backlog_at;
            w->backlog_at += strlen(id) + 1;
            b->ids[b->n++] = xstrdup(id);
            b->took_backlog = 1;
        }
    } else {
        watch_backlog_clear(w); /* a full pass sees every account */
    }
    strmap_free(&w->pending);
    w->full_pending = 0;
    return 1;
}

void watch_batch_free(watch_batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->ids[i]);
    free(b->ids);
    memset(b, 0, sizeof *b);
}

void watch_retry_full(watch *w)
{
    w->full_pending = 1;
}

void watch_defer(watch *w, const char *ids, size_t len)
{
    buf next = {0};
    buf_append(&next, ids, len);
    if (watch_backlog_left(w))
        buf_append(&next, w->backlog.data + w->backlog_at, w->backlog.len - w->backlog_at);
    watch_backlog_clear(w);
    w->backlog = next;
}

/* ---- backoff ------------------------------------------------------------------- */

void watch_fail_later(watch *w, const char *account_id)
{
    if (account_id == NULL)
        return;
    backoff *b = strmap_get(&w->backoff, account_id);
    if (b == NULL) {
        b = xcalloc(1, sizeof *b);
        strmap_put(&w->backoff, account_id, b);
    }
    b->failures++;
    uint64_t delay = 1000u << (b->failures < 8 ? b->failures - 1 : 8); /* 1 s .. 256 s */
    delay += (uint64_t)(rand() % 500);
    b->next_ms = util_now_ms() + delay;
}

void watch_forgive(watch *w, const char *account_id)
{
    free(strmap_del(&w->backoff, account_id ? account_id : ""));
}

int watch_backing_off(const watch *w, const char *account_id, uint64_t now_ms)
{
    const backoff *b = account_id ? strmap_get(&w->backoff, account_id) : NULL;
    return b && now_ms < b->next_ms;
}

void watch_tick(watch *w, uint64_t now_ms)
{
    size_t it = 0;
    const char *k;
    void *v;
    while (strmap_next(&w->backoff, &it, &k, &v))
        if (((backoff *)v)->next_ms <= now_ms && ((backoff *)v)->next_ms != 0) {
            ((backoff *)v)->next_ms = 0;
            watch_enqueue(w, k);
        }
}

/* ---- the database ---------------------------------------------------------------- */

static void check_schema(watch *w);

static void on_star_timer(uv_timer_t *t)
{
    watch *w = t->data;
    w->last_star_ms = util_now_ms();
    watch_kick_full(w);
}

static void on_notify(const char *channel, const char *payload, void *ud)
{
    watch *w = ud;
    (void)channel;
    metrics_add("sync_airbnb_operator_notifications_total", NULL, 1);
    if (strcmp(payload, "*") == 0) {
        /* "Read everything" is a full read of the table, and any database
         * role can NOTIFY: at most one per STAR_MIN_INTERVAL_MS, the rest
         * folded into the next one. */
        uint64_t now = util_now_ms();
        if (w->last_star_ms == 0 || now >= w->last_star_ms + STAR_MIN_INTERVAL_MS) {
            w->last_star_ms = now;
            watch_kick_full(w);
        } else if (!uv_is_active((uv_handle_t *)&w->star_timer)) {
            metrics_add("sync_airbnb_operator_full_notifications_deferred_total", NULL, 1);
            uv_timer_start(&w->star_timer, on_star_timer, w->last_star_ms + STAR_MIN_INTERVAL_MS - now, 0);
        }
    } else {
        /* The row changed (perhaps fixing what made its writes fail): try
         * it now rather than after its backoff. */
        watch_forgive(w, payload);
        watch_enqueue(w, payload);
    }
}

static void on_db_readable(uv_poll_t *p, int status, int events)
{
    watch *w = p->data;
    (void)events;
    if (status < 0 || pg_consume_notifies(w->db, on_notify, w) < 0)
        watch_db_lost(w, "connection lost");
}

/* A NOTIFY that arrives while a query runs is parsed by libpq and queued;
 * the socket will not signal it again. Drain the queue before the loop
 * blocks, each iteration. */
static void on_notify_drain(uv_prepare_t *h)
{
    watch *w = h->data;
    if (w->db_up && pg_consume_notifies(w->db, on_notify, w) < 0)
        watch_db_lost(w, "connection lost");
}

static void close_free(uv_handle_t *h)
{
    free(h);
}

static void db_unwatch(watch *w)
{
    if (w->db_poll) {
        uv_poll_stop(w->db_poll);
        uv_close((uv_handle_t *)w->db_poll, close_free);
        w->db_poll = NULL;
    }
}

static void db_watch_socket(watch *w)
{
    db_unwatch(w);
    int fd = pg_socket(w->db);
    if (fd < 0)
        return;
    w->db_poll = xcalloc(1, sizeof *w->db_poll);
    uv_poll_init(w->loop, w->db_poll, fd);
    w->db_poll->data = w;
    uv_poll_start(w->db_poll, UV_READABLE, on_db_readable);
}

static void on_db_connected(watch *w)
{
    w->db_up = 1;
    w->db_backoff_ms = 0;
    free(w->db_error);
    w->db_error = NULL;
    db_watch_socket(w);
    log_info("database connected; listening", "channel", WATCH_CHANNEL, NULL);
    check_schema(w);
    watch_kick_full(w); /* notifications may have been missed */
}

static void on_db_retry(uv_timer_t *t)
{
    watch *w = t->data;
    char err[512];
    int ok;
    if (w->db == NULL) {
        w->db = pg_connect(w->cfg->database_url, w->cfg->db_timeout_ms, err, sizeof err);
        ok = w->db && pg_listen(w->db, WATCH_CHANNEL, err, sizeof err) == 0;
    } else {
        ok = pg_reconnect(w->db, err, sizeof err) == 0;
    }
    if (ok)
        on_db_connected(w);
    else
        watch_db_lost(w, err);
    changed(w);
}

void watch_db_lost(watch *w, const char *why)
{
    if (w->db_up || w->db_error == NULL || strcmp(w->db_error, why) != 0)
        log_error("database unavailable; reconciling paused (no deletes while it is away)", "error", why, NULL);
    w->db_up = 0;
    free(w->db_error);
    w->db_error = xstrdup(why);
    db_unwatch(w);
    w->db_backoff_ms = w->db_backoff_ms ? w->db_backoff_ms * 2 : 500;
    if (w->db_backoff_ms > 30000)
        w->db_backoff_ms = 30000;
    if (!w->stopping)
        uv_timer_start(&w->db_retry, on_db_retry, (uint64_t)w->db_backoff_ms, 0);
    changed(w);
}

static void on_schema_timer(uv_timer_t *t)
{
    check_schema(t->data);
}

static void check_schema(watch *w)
{
    if (!w->db_up)
        return;
    char err[512] = "";
    int at = migrate_at_head(w->db, w->cfg, err, sizeof err);
    if (at == 1) {
        if (!w->schema_ok)
            log_info("schema at head; reconciling", NULL);
        w->schema_ok = 1;
        free(w->schema_error);
        w->schema_error = NULL;
        metrics_set("sync_airbnb_operator_schema_at_head", NULL, 1);
        watch_kick_full(w);
        return;
    }
    if (at < 0 && !pg_ok(w->db)) {
        watch_db_lost(w, err);
        return;
    }
    if (w->schema_error == NULL || strcmp(w->schema_error, err) != 0)
        log_warn("waiting for the database migrations (run `sync-airbnb-operator migrate up` or the migration Job)",
                 "reason", err, NULL);
    w->schema_ok = 0;
    free(w->schema_error);
    w->schema_error = xstrdup(err);
    metrics_set("sync_airbnb_operator_schema_at_head", NULL, 0);
    uv_timer_start(&w->schema_timer, on_schema_timer, 2000, 0);
}

pg_conn *watch_db(const watch *w)
{
    return w->db_up ? w->db : NULL;
}

int watch_db_up(const watch *w)
{
    return w->db_up;
}

const char *watch_db_error(const watch *w)
{
    return w->db_error;
}

int watch_schema_ok(const watch *w)
{
    return w->schema_ok;
}

const char *watch_schema_error(const watch *w)
{
    return w->schema_error;
}

watch *watch_start(uv_loop_t *loop, const config *cfg, const watch_hooks *hooks)
{
    watch *w = xcalloc(1, sizeof *w);
    w->cfg = cfg;
    w->loop = loop;
    w->hooks = *hooks;
    uv_timer_init(loop, &w->db_retry);
    uv_timer_init(loop, &w->schema_timer);
    uv_timer_init(loop, &w->star_timer);
    uv_timer_init(loop, &w->pass_timer);
    w->db_retry.data = w->schema_timer.data = w->star_timer.data = w->pass_timer.data = w;
    uv_prepare_init(loop, &w->notify_drain);
    w->notify_drain.data = w;
    uv_prepare_start(&w->notify_drain, on_notify_drain);
    char err[512];
    w->db = pg_connect(cfg->database_url, cfg->db_timeout_ms, err, sizeof err);
    if (w->db && pg_listen(w->db, WATCH_CHANNEL, err, sizeof err) == 0)
        on_db_connected(w);
    else
        watch_db_lost(w, err);
    return w;
}

void watch_stop(watch *w)
{
    w->stopping = 1;
    uv_timer_stop(&w->pass_timer);
    uv_timer_stop(&w->star_timer);
}

void watch_close(watch *w)
{
    if (w)
        db_unwatch(w);
}

void watch_free(watch *w)
{
    if (w == NULL)
        return;
    pg_close(w->db);
    strmap_free(&w->pending);
    watch_backlog_clear(w);
    size_t it = 0;
    void *v;
    while (strmap_next(&w->backoff, &it, NULL, &v))
        free(v);
    strmap_free(&w->backoff);
    free(w->db_error);
    free(w->schema_error);
    free(w);
}
