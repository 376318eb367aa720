/* kube_async: Kubernetes requests and watch streams on a libuv loop, through
 * the curl multi socket API (the classic curl + libuv integration: one
 * uv_poll_t per socket curl asks about, one uv_timer_t for curl's timeout).
 *
 * Around it: a token bucket (qps/burst) and an in-flight cap that every
 * attempt passes through, retries with Retry-After or exponential backoff +
 * jitter, and the watch framing parser. See kube.h.
 *
 * Re-entrancy: curl forbids multi calls from inside its callbacks, and user
 * callbacks (on_event) run inside curl's write callback. So starting work
 * never calls curl directly: it queues and arms `pump_timer`; stopping a
 * watch from inside a curl callback marks it and `reap_stopped` removes it
 * once curl has returned. */
#define KUBE_INTERNAL
#include "kube.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "util.h"

#define RETRY_AFTER_CAP_S 60
#define WATCH_CONNECT_TIMEOUT_MS 10000L
#define WATCH_ERROR_BODY_MAX 65536

enum { XFER_REQUEST, XFER_WATCH };

/* One queued or running request or watch. */
struct xfer {
    struct xfer *prev, *next;  /* on a->pending (queued) or a->active */
    kube_async *a;
    int kind;
    int queued;
    char *method, *path, *content_type, *body;
    size_t len;
    int timeout_ms;            /* requests: per attempt */
    int attempt;               /* retries so far */
    uint64_t not_before_ms;    /* backoff: do not start before */
    CURL *easy;
    struct curl_slist *headers;
    char errbuf[CURL_ERROR_SIZE];
    struct kube_body_sink in;  /* response body (requests; non-200 watches) */
    int retry_after_s;
    kube_done_cb done;
    void *ud;
};

struct kube_watch {
    struct xfer x;             /* first member: a kube_watch is freed as its xfer */
    kube_watch_event_cb on_event;
    kube_watch_end_cb on_end;
    kube_watch_framer *framer;
    char *frame_err;           /* the stream carried something that is not an event */
    long status;               /* HTTP status once the first body bytes arrived */
    uint64_t last_data_ms;     /* start, or the last bytes received */
    int idle_expired;          /* ended by the idle timer */
    int stopped;               /* kube_watch_stop was called: no more callbacks */
    int in_end;                /* inside on_end: kube_watch_stop must not free */
};

struct xfer_list {
    struct xfer *head, *tail;
    int n;
};

/* A socket curl wants watched. */
struct sockctx {
    uv_poll_t poll;            /* first member: the close callback frees the struct */
    kube_async *a;
    curl_socket_t fd;
    struct sockctx *prev, *next;
};

struct kube_async {
    kube_client *client;
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer;     /* curl's own timeout */
    uv_timer_t pump_timer;     /* starts queued work: now, or when a token/backoff is due */
    uv_timer_t idle_timer;     /* the earliest watch idle deadline */
    kube_limits lim;
    double tokens;
    uint64_t refill_ms;
    struct xfer_list pending, active;
    int inflight;              /* active requests; watches are not counted */
    int watches;               /* queued + active watches */
    struct sockctx *socks;
    int in_curl;               /* inside curl_multi_socket_action */
    int closing;
    int open_handles;          /* uv timers not yet closed; a is freed at 0 */
    uint64_t idle_armed_at;    /* deadline idle_timer is armed for, 0 = none */
    uint64_t rng;
    int (*may_write)(void *ud); /* the write gate (leadership), NULL: none */
    void *gate_ud;
};

/* ---- lists ------------------------------------------------------------- */

static void list_append(struct xfer_list *l, struct xfer *x)
{
    x->next = NULL;
    x->prev = l->tail;
    if (l->tail)
        l->tail->next = x;
    else
        l->head = x;
    l->tail = x;
    l->n++;
}

static void list_remove(struct xfer_list *l, struct xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        l->head = x->next;
    if (x->next)
        x->next->prev = x->prev;
    else
        l->tail = x->prev;
    x->prev = x->next = NULL;
    l->n--;
}

/* ---- transfers --------------------------------------------------------- */

static void xfer_reset_attempt(struct xfer *x)
{
    if (x->easy)
        curl_easy_cleanup(x->easy);
    x->easy = NULL;
    curl_slist_free_all(x->headers);
    x->headers = NULL;
    buf_free(&x->in.b);
    x->in.too_large = 0;
    x->retry_after_s = -1;
    x->errbuf[0] = '\0';
}

/* Frees x; it must be off both lists and out of the multi handle. */
static void xfer_free(struct xfer *x)
{
    xfer_reset_attempt(x);
    free(x->method);
    free(x->path);
    free(x->content_type);
    free(x->body);
    if (x->kind == XFER_WATCH) {
        kube_watch *w = (kube_watch *)x;
        kube_watch_framer_free(w->framer);
        free(w->frame_err);
        x->a->watches--;
    }
    free(x);
}

static uint64_t next_random(kube_async *a)
{
    /* xorshift64: jitter only, no need for a shared or strong generator */
    a->rng ^= a->rng << 13;
    a->rng ^= a->rng >> 7;
    a->rng ^= a->rng << 17;
    return a->rng;
}

/* Exponential backoff with "equal jitter": half fixed, half random. */
static uint64_t backoff_ms(kube_async *a, int attempt)
{
    uint64_t d = (uint64_t)a->lim.backoff_base_ms;
    for (int i = 0; i < attempt && d < (uint64_t)a->lim.backoff_max_ms; i++)
        d *= 2;
    if (d > (uint64_t)a->lim.backoff_max_ms)
        d = (uint64_t)a->lim.backoff_max_ms;
    return d / 2 + next_random(a) % (d / 2 + 1);
}

/* ---- token bucket ------------------------------------------------------ */

static void refill(kube_async *a, uint64_t now)
{
    if (a->lim.qps < 0)
        return;
    a->tokens += (double)(now - a->refill_ms) * a->lim.qps / 1000.0;
    if (a->tokens > a->lim.burst)
        a->tokens = a->lim.burst;
    a->refill_ms = now;
}

static int take_token(kube_async *a)
{
    if (a->lim.qps < 0)
        return 1;
    if (a->tokens >= 1.0) {
        a->tokens -= 1.0;
        return 1;
    }
    return 0;
}

static uint64_t token_wait_ms(const kube_async *a)
{
    double ms = ceil((1.0 - a->tokens) * 1000.0 / a->lim.qps);
    return ms < 1 ? 1 : (uint64_t)ms;
}

/* ---- curl <-> libuv ---------------------------------------------------- */

static void after_curl(kube_async *a);
static void pump(kube_async *a);
static void arm_idle(kube_async *a);

static void socket_action(kube_async *a, curl_socket_t fd, int flags)
{
    int running;
    a->in_curl++;
    curl_multi_socket_action(a->multi, fd, flags, &running);
    a->in_curl--;
    after_curl(a);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct sockctx *s = (struct sockctx *)p;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    socket_action(s->a, s->fd, flags);
}

static void on_sock_closed(uv_handle_t *h)
{
    free(h); /* the uv_poll_t is the first member of its sockctx */
}

static void sock_close(kube_async *a, struct sockctx *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        a->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

/* CURLMOPT_SOCKETFUNCTION */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    kube_async *a = userp;
    struct sockctx *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            sock_close(a, s);
            curl_multi_assign(a->multi, fd, NULL);
        }
        return 0;
    }
    if (a->closing)
        return 0;
    if (s == NULL) {
        s = xcalloc(1, sizeof *s);
        s->a = a;
        s->fd = fd;
        if (uv_poll_init_socket(a->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->next = a->socks;
        if (a->socks)
            a->socks->prev = s;
        a->socks = s;
        curl_multi_assign(a->multi, fd, s);
    }
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

static void on_curl_timeout(uv_timer_t *t)
{
    socket_action(t->data, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_TIMERFUNCTION */
static int on_curl_timer(CURLM *m, long timeout_ms, void *userp)
{
    kube_async *a = userp;
    if (a->closing)
        return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&a->curl_timer);
    else
        uv_timer_start(&a->curl_timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- requests ---------------------------------------------------------- */

/* Whether a request may be sent again after this attempt, like client-go:
 * a POST is not idempotent, so after a failure that may have come after the
 * server accepted it (a timeout, a dropped connection, a 500) it is not
 * repeated; the caller finds out what happened (controller.c, a create's
 * GET). It is when the request never reached the server (no connection) or
 * the server said to (429, or a 5xx with Retry-After). Every other verb the
 * operator sends is safe to repeat: GET, apply PATCHes, JSON patches that
 * test the resourceVersion, DELETEs with a uid precondition. */
static int may_repeat(const struct xfer *x, CURLcode rc, long status)
{
    if (strcmp(x->method, "POST") != 0)
        return 1;
    if (rc != CURLE_OK)
        return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
               rc == CURLE_COULDNT_RESOLVE_PROXY;
    return status == 429 || status == 401 || x->retry_after_s >= 0; /* 401: not applied */
}

/* An attempt of a request ended (the easy handle is out of the multi). */
static void request_done(kube_async *a, struct xfer *x, CURLcode rc)
{
    char err[512] = "";
    long status = 0;
    int retry = 0;
    uint64_t delay = 0;

    if (rc == CURLE_OK)
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    kube_stats_add(x->method, status);
    if (rc != CURLE_OK) {
        if (x->in.too_large) {
            util_seterr(err, sizeof err, "%s %s: response larger than %u bytes", x->method, x->path,
                        KUBE_MAX_RESPONSE);
        } else {
            kube_transport_error(err, sizeof err, x->method, x->path, rc, x->errbuf, x->timeout_ms);
            retry = 1;
            delay = backoff_ms(a, x->attempt);
        }
    } else if (status == 429 || status == 503) {
        retry = 1;
        if (x->retry_after_s >= 0)
            delay = (uint64_t)(x->retry_after_s > RETRY_AFTER_CAP_S ? RETRY_AFTER_CAP_S : x->retry_after_s) * 1000;
        else
            delay = backoff_ms(a, x->attempt);
    } else if (status >= 500) {
        retry = 1;
        delay = backoff_ms(a, x->attempt);
    } else if (kube_client_saw_status(a->client, status)) {
        retry = 1; /* a 401 dropped the exec plugin's credential: send again with a new one */
    }

    if (retry && x->attempt < a->lim.max_retries && may_repeat(x, rc, status)) {
        char st[24], at[24], dl[24];
        snprintf(st, sizeof st, "%ld", status);
        snprintf(at, sizeof at, "%d", x->attempt + 1);
        snprintf(dl, sizeof dl, "%llu", (unsigned long long)delay);
        log_debug("kube: retrying request", "method", x->method, "path", x->path, "status", st,
                  "error", rc != CURLE_OK ? err : "", "retry", at, "delay_ms", dl, NULL);
        x->attempt++;
        xfer_reset_attempt(x);
        x->not_before_ms = util_now_ms() + delay;
        x->queued = 1;
        list_append(&a->pending, x);
        return;
    }
    if (rc != CURLE_OK) {
        x->done(NULL, err, x->ud);
    } else {
        kube_response r = {0};
        r.status = status;
        r.len = x->in.b.len;
        r.body = x->in.b.data ? buf_steal(&x->in.b) : xstrdup("");
        r.retry_after_s = x->retry_after_s;
        kube_response_parse_status(&r);
        x->done(&r, NULL, x->ud);
        kube_response_free(&r);
    }
    xfer_free(x);
}

/* ---- watches ----------------------------------------------------------- */

static int watch_frame(const char *type, const char *object_json, size_t len, void *ud)
{
    kube_watch *w = ud;
    w->on_event(type, object_json, len, w->x.ud);
    return w->stopped;
}

static size_t watch_write(char *data, size_t size, size_t n, void *ud)
{
    kube_watch *w = ud;
    size_t len = size * n;
    char err[256];
    if (w->stopped)
        return len; /* reaped as soon as curl returns */
    w->last_data_ms = util_now_ms();
    if (w->status == 0)
        curl_easy_getinfo(w->x.easy, CURLINFO_RESPONSE_CODE, &w->status);
    if (w->status != 200) {
        /* An error answer: keep (the start of) its Status body for on_end. */
        size_t room = WATCH_ERROR_BODY_MAX - w->x.in.b.len;
        if (room > 0)
            buf_append(&w->x.in.b, data, len < room ? len : room);
        return len;
    }
    if (kube_watch_framer_feed(w->framer, data, len, watch_frame, w, err, sizeof err) < 0) {
        w->frame_err = xstrdup(err);
        return 0; /* abort the transfer */
    }
    return len;
}

/* The watch stream ended (the easy handle is out of the multi). */
static void watch_done(kube_async *a, kube_watch *w, CURLcode rc)
{
    struct xfer *x = &w->x;
    char err[768], what[512];
    const char *e = NULL;
    long status = w->status;

    if (w->stopped) { /* normally reaped before; never report a stopped watch */
        xfer_free(x);
        return;
    }
    if (status == 0 && x->easy)
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    kube_stats_add("WATCH", status);
    kube_client_saw_status(a->client, status); /* a 401: the re-watch gets a new credential */
    if (w->frame_err) {
        util_seterr(err, sizeof err, "watch %s: %s", x->path, w->frame_err);
        e = err;
    } else if (status != 0 && status != 200) {
        kube_response r = {0};
        r.status = status;
        r.len = x->in.b.len;
        r.body = x->in.b.data ? buf_steal(&x->in.b) : xstrdup("");
        kube_response_parse_status(&r);
        util_seterr(err, sizeof err, "watch %s: %s", x->path, kube_response_error(&r, what, sizeof what));
        kube_response_free(&r);
        e = err;
    } else if (w->idle_expired) {
        util_seterr(err, sizeof err, "watch %s: no data for %d ms (idle timeout)", x->path,
                    a->lim.watch_idle_timeout_ms);
        e = err;
    } else if (rc != CURLE_OK) {
        kube_transport_error(err, sizeof err, "watch", x->path, rc, x->errbuf, 0);
        e = err;
    }
    if (kube_watch_framer_pending(w->framer) > 0)
        log_debug("kube: watch stream ended inside an event; partial line dropped", "path", x->path, NULL);
    w->in_end = 1;
    w->on_end(status, e, x->ud);
    xfer_free(x);
}

/* ---- starting, finishing, pumping --------------------------------------- */

/* Starts x (off every list). -1 with x->errbuf set on failure. */
static int xfer_start(kube_async *a, struct xfer *x)
{
    x->easy = curl_easy_init();
    if (x->easy == NULL) {
        util_seterr(x->errbuf, sizeof x->errbuf, "%s %s: curl_easy_init failed", x->method, x->path);
        return -1;
    }
    if (kube_client_prepare(a->client, x->easy, x->method, x->path, x->content_type, x->body, x->len,
                            &x->headers, x->errbuf, sizeof x->errbuf) < 0)
        return -1;
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, (char *)x);
    curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(x->easy, CURLOPT_HEADERFUNCTION, kube_curl_header_cb);
    curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, &x->retry_after_s);
    if (x->kind == XFER_REQUEST) {
        curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)x->timeout_ms);
        curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)(x->timeout_ms < 10000 ? x->timeout_ms : 10000));
        curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, kube_body_write_cb);
        curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, &x->in);
    } else {
        /* No total timeout for a stream: the idle timer (curl's low-speed
         * limit averages over seconds, too coarse) and TCP keepalive instead. */
        curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, 0L);
        curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS, WATCH_CONNECT_TIMEOUT_MS);
        curl_easy_setopt(x->easy, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(x->easy, CURLOPT_TCP_KEEPIDLE, 30L);
        curl_easy_setopt(x->easy, CURLOPT_TCP_KEEPINTVL, 10L);
        curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, watch_write);
        curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
    }
    if (curl_multi_add_handle(a->multi, x->easy) != CURLM_OK) {
        util_seterr(x->errbuf, sizeof x->errbuf, "%s %s: curl_multi_add_handle failed", x->method, x->path);
        return -1;
    }
    x->queued = 0;
    list_append(&a->active, x);
    if (x->kind == XFER_REQUEST) {
        a->inflight++;
    } else {
        ((kube_watch *)x)->last_data_ms = util_now_ms();
        arm_idle(a);
    }
    return 0;
}

/* The earliest moment an active watch may have been idle too long. */
static void on_idle(uv_timer_t *t);

static void arm_idle(kube_async *a)
{
    uint64_t deadline = UINT64_MAX, now = util_now_ms();
    for (struct xfer *x = a->active.head; x; x = x->next) {
        if (x->kind != XFER_WATCH || ((kube_watch *)x)->stopped)
            continue;
        uint64_t d = ((kube_watch *)x)->last_data_ms + (uint64_t)a->lim.watch_idle_timeout_ms;
        if (d < deadline)
            deadline = d;
    }
    if (deadline == UINT64_MAX) {
        uv_timer_stop(&a->idle_timer);
        a->idle_armed_at = 0;
    } else if (a->idle_armed_at == 0 || deadline < a->idle_armed_at) {
        uv_timer_start(&a->idle_timer, on_idle, deadline > now ? deadline - now : 0, 0);
        a->idle_armed_at = deadline;
    }
}

/* Ends the watches that received nothing for watch_idle_timeout_ms. Runs
 * from the loop, never inside curl. */
static void on_idle(uv_timer_t *t)
{
    kube_async *a = t->data;
    a->idle_armed_at = 0;
again:
    if (a->closing)
        return;
    uint64_t now = util_now_ms();
    for (struct xfer *x = a->active.head; x; x = x->next) {
        kube_watch *w = (kube_watch *)x;
        if (x->kind != XFER_WATCH || w->stopped ||
            now - w->last_data_ms < (uint64_t)a->lim.watch_idle_timeout_ms)
            continue;
        curl_multi_remove_handle(a->multi, x->easy);
        list_remove(&a->active, x);
        w->idle_expired = 1;
        watch_done(a, w, CURLE_OPERATION_TIMEDOUT);
        goto again; /* on_end may have changed the list */
    }
    arm_idle(a);
}

/* x could not be started (x->errbuf says why): report and free it. */
static void xfer_start_failed(kube_async *a, struct xfer *x)
{
    if (x->kind == XFER_REQUEST) {
        kube_stats_add(x->method, 0);
        x->done(NULL, x->errbuf, x->ud);
    } else {
        kube_watch *w = (kube_watch *)x;
        kube_stats_add("WATCH", 0);
        w->in_end = 1;
        w->on_end(0, x->errbuf, x->ud);
    }
    xfer_free(x);
}

static void xfer_start_failed(kube_async *a, struct xfer *x);

static void on_pump(uv_timer_t *t)
{
    pump(t->data);
}

static void schedule_pump(kube_async *a)
{
    uv_timer_start(&a->pump_timer, on_pump, 0, 0);
}

/* A request the write gate applies to: one that changes a Deployment. */
static int gated(const kube_async *a, const struct xfer *x)
{
    return a->may_write && x->kind == XFER_REQUEST && strcmp(x->method, "GET") != 0 &&
           strstr(x->path, "/deployments") != NULL;
}

/* Fails a queued request the gate refuses (x leaves the pending list). */
static void refuse_write(kube_async *a, struct xfer *x)
{
    list_remove(&a->pending, x);
    x->queued = 0;
    snprintf(x->errbuf, sizeof x->errbuf, "not the leader: write not sent");
    xfer_start_failed(a, x);
}

void kube_async_set_write_gate(kube_async *a, int (*may_write)(void *ud), void *ud)
{
    a->may_write = may_write;
    a->gate_ud = ud;
}

void kube_async_cancel_writes(kube_async *a)
{
again:
    for (struct xfer *x = a->pending.head; x; x = x->next) {
        if (gated(a, x) && !a->may_write(a->gate_ud)) {
            refuse_write(a, x); /* the callback may change the list: start over */
            goto again;
        }
    }
}

/* Starts what may start now (backoff over, a token, an in-flight slot), in
 * queue order, and arms pump_timer for the next moment something may. Never
 * runs inside a curl callback. Every attempt of a write, retries included,
 * passes the write gate right before it is sent. */
static void pump(kube_async *a)
{
again:
    if (a->closing)
        return;
    uint64_t now = util_now_ms(), wake = UINT64_MAX;
    refill(a, now);
    for (struct xfer *x = a->pending.head, *next; x; x = next) {
        next = x->next;
        if (gated(a, x) && !a->may_write(a->gate_ud)) {
            refuse_write(a, x);
            goto again;
        }
        if (x->not_before_ms > now) {
            if (x->not_before_ms < wake)
                wake = x->not_before_ms;
            continue;
        }
        if (x->kind == XFER_REQUEST && a->inflight >= a->lim.max_inflight)
            continue; /* a completion pumps again */
        if (!take_token(a)) {
            if (now + token_wait_ms(a) < wake)
                wake = now + token_wait_ms(a);
            break;
        }
        if (gated(a, x) && !a->may_write(a->gate_ud)) { /* checked again: the token wait */
            refuse_write(a, x);
            goto again;
        }
        list_remove(&a->pending, x);
        x->queued = 0;
        if (xfer_start(a, x) < 0) {
            /* The callback may queue or stop anything: start over afterwards. */
            xfer_start_failed(a, x);
            goto again;
        }
    }
    if (wake != UINT64_MAX)
        uv_timer_start(&a->pump_timer, on_pump, wake - now, 0);
    else
        uv_timer_stop(&a->pump_timer);
}

/* Removes watches stopped while curl was on the stack. */
static void reap_stopped(kube_async *a)
{
    for (struct xfer *x = a->active.head, *next; x; x = next) {
        next = x->next;
        if (x->kind == XFER_WATCH && ((kube_watch *)x)->stopped) {
            curl_multi_remove_handle(a->multi, x->easy);
            list_remove(&a->active, x);
            xfer_free(x);
        }
    }
}

/* After curl returned: reap, deliver finished transfers, start queued work. */
static void after_curl(kube_async *a)
{
    CURLMsg *m;
    int left;
    if (a->in_curl || a->closing)
        return;
    reap_stopped(a);
    while ((m = curl_multi_info_read(a->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode rc = m->data.result;
        char *priv = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
        struct xfer *x = (struct xfer *)priv;
        curl_multi_remove_handle(a->multi, e);
        list_remove(&a->active, x);
        if (x->kind == XFER_REQUEST) {
            a->inflight--;
            request_done(a, x, rc);
        } else {
            watch_done(a, (kube_watch *)x, rc);
        }
    }
    pump(a);
}

/* ---- public ------------------------------------------------------------ */

kube_async *kube_async_new(kube_client *c, uv_loop_t *loop, const kube_limits *lim)
{
    kube_async *a = xcalloc(1, sizeof *a);
    a->client = c;
    a->loop = loop;
    if (lim)
        a->lim = *lim;
    if (a->lim.qps == 0)
        a->lim.qps = 20;
    if (a->lim.burst <= 0)
        a->lim.burst = 40;
    if (a->lim.max_inflight <= 0)
        a->lim.max_inflight = 16;
    if (a->lim.max_retries == 0)
        a->lim.max_retries = 5;
    if (a->lim.max_retries < 0)
        a->lim.max_retries = 0;
    if (a->lim.backoff_base_ms <= 0)
        a->lim.backoff_base_ms = 200;
    if (a->lim.backoff_max_ms <= 0)
        a->lim.backoff_max_ms = 10000;
    if (a->lim.backoff_max_ms < a->lim.backoff_base_ms)
        a->lim.backoff_max_ms = a->lim.backoff_base_ms;
    if (a->lim.watch_idle_timeout_ms <= 0)
        a->lim.watch_idle_timeout_ms = 330000;
    a->tokens = a->lim.burst;
    a->refill_ms = util_now_ms();
    a->rng = (util_wall_ms() ^ (uint64_t)(uintptr_t)a) | 1;

    a->multi = curl_multi_init();
    if (a->multi == NULL) {
        fprintf(stderr, "fatal: curl_multi_init failed\n");
        abort();
    }
    curl_multi_setopt(a->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(a->multi, CURLMOPT_SOCKETDATA, a);
    curl_multi_setopt(a->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(a->multi, CURLMOPT_TIMERDATA, a);
    uv_timer_init(loop, &a->curl_timer);
    uv_timer_init(loop, &a->pump_timer);
    uv_timer_init(loop, &a->idle_timer);
    a->curl_timer.data = a;
    a->pump_timer.data = a;
    a->idle_timer.data = a;
    a->open_handles = 3;
    return a;
}

static void on_timer_closed(uv_handle_t *h)
{
    kube_async *a = h->data;
    if (--a->open_handles == 0)
        free(a);
}

void kube_async_free(kube_async *a)
{
    if (a == NULL)
        return;
    a->closing = 1;
    while (a->active.head) {
        struct xfer *x = a->active.head;
        list_remove(&a->active, x);
        curl_multi_remove_handle(a->multi, x->easy);
        xfer_free(x);
    }
    while (a->pending.head) {
        struct xfer *x = a->pending.head;
        list_remove(&a->pending, x);
        xfer_free(x);
    }
    curl_multi_cleanup(a->multi);
    a->multi = NULL;
    while (a->socks)
        sock_close(a, a->socks);
    uv_close((uv_handle_t *)&a->curl_timer, on_timer_closed);
    uv_close((uv_handle_t *)&a->pump_timer, on_timer_closed);
    uv_close((uv_handle_t *)&a->idle_timer, on_timer_closed);
}

static struct xfer *xfer_new(kube_async *a, size_t size, int kind, const char *method, const char *path)
{
    struct xfer *x = xcalloc(1, size);
    x->a = a;
    x->kind = kind;
    x->method = xstrdup(method);
    x->path = xstrdup(path);
    x->retry_after_s = -1;
    return x;
}

static void xfer_enqueue(kube_async *a, struct xfer *x)
{
    x->queued = 1;
    list_append(&a->pending, x);
    schedule_pump(a);
}

int kube_async_request(kube_async *a, const char *method, const char *path, const char *content_type,
                       const char *body, size_t len, int timeout_ms, kube_done_cb done, void *ud)
{
    if (a == NULL || a->closing || method == NULL || path == NULL || done == NULL)
        return -1;
    struct xfer *x = xfer_new(a, sizeof *x, XFER_REQUEST, method, path);
    x->content_type = content_type ? xstrdup(content_type) : NULL;
    if (body) {
        x->body = xmalloc(len + 1);
        memcpy(x->body, body, len);
        x->body[len] = '\0';
        x->len = len;
    }
    x->timeout_ms = timeout_ms > 0 ? timeout_ms : KUBE_DEFAULT_TIMEOUT_MS;
    x->done = done;
    x->ud = ud;
    xfer_enqueue(a, x);
    return 0;
}

kube_watch *kube_watch_start(kube_async *a, const char *path, kube_watch_event_cb on_event,
                             kube_watch_end_cb on_end, void *ud)
{
    if (a == NULL || a->closing || path == NULL || on_event == NULL || on_end == NULL)
        return NULL;
    kube_watch *w = (kube_watch *)xfer_new(a, sizeof *w, XFER_WATCH, "GET", path);
    w->x.ud = ud;
    w->on_event = on_event;
    w->on_end = on_end;
    w->framer = kube_watch_framer_new(0);
    a->watches++;
    xfer_enqueue(a, &w->x);
    return w;
}

void kube_watch_stop(kube_watch *w)
{
    if (w == NULL)
        return;
    kube_async *a = w->x.a;
    if (w->in_end || w->stopped) {
        w->stopped = 1; /* freed by whoever is on the stack */
        return;
    }
    w->stopped = 1;
    if (w->x.queued) {
        list_remove(&a->pending, &w->x);
        xfer_free(&w->x);
    } else if (!a->in_curl) {
        curl_multi_remove_handle(a->multi, w->x.easy);
        list_remove(&a->active, &w->x);
        xfer_free(&w->x);
    }
    /* else: inside a curl callback; reap_stopped frees it once curl returns */
}

void kube_async_counts(const kube_async *a, int *queued, int *inflight, int *watches)
{
    if (queued)
        *queued = a->pending.n;
    if (inflight)
        *inflight = a->inflight;
    if (watches)
        *watches = a->watches;
}

/* ---- watch framing ----------------------------------------------------- */

struct kube_watch_framer {
    buf line;       /* an incomplete line carried over from earlier chunks */
    buf object;     /* scratch: the event's object re-serialised */
    size_t max_line;
};

kube_watch_framer *kube_watch_framer_new(size_t max_line)
{
    kube_watch_framer *f = xcalloc(1, sizeof *f);
    f->max_line = max_line ? max_line : KUBE_WATCH_MAX_LINE;
    return f;
}

void kube_watch_framer_free(kube_watch_framer *f)
{
    if (f == NULL)
        return;
    buf_free(&f->line);
    buf_free(&f->object);
    free(f);
}

size_t kube_watch_framer_pending(const kube_watch_framer *f)
{
    return f->line.len;
}

/* One complete line: 0 (delivered or blank), 1 (cb asked to stop), -1. */
static int frame_line(kube_watch_framer *f, const char *line, size_t n, kube_watch_frame_cb cb, void *ud,
                      char *err, size_t errlen)
{
    char jerr[160];
    while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
        n--;
    size_t i = 0;
    while (i < n && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i == n)
        return 0;
    json_value *root = json_parse(line, n, jerr, sizeof jerr);
    if (root == NULL) {
        util_seterr(err, errlen, "malformed watch event: %s", jerr);
        return -1;
    }
    const char *type = json_string(json_get(root, "type"));
    const json_value *obj = json_get(root, "object");
    if (type == NULL || json_typeof(obj) != JSON_OBJECT) {
        util_seterr(err, errlen, "malformed watch event: no string \"type\" or no object \"object\"");
        json_free(root);
        return -1;
    }
    buf_reset(&f->object);
    json_write(&f->object, obj);
    int stop = cb(type, f->object.data, f->object.len, ud);
    json_free(root);
    return stop ? 1 : 0;
}

int kube_watch_framer_feed(kube_watch_framer *f, const char *data, size_t len, kube_watch_frame_cb cb,
                           void *ud, char *err, size_t errlen)
{
    size_t off = 0;
    while (off < len) {
        const char *nl = memchr(data + off, '\n', len - off);
        size_t chunk = nl ? (size_t)(nl - (data + off)) : len - off;
        if (f->line.len + chunk > f->max_line) {
            util_seterr(err, errlen, "watch event longer than %zu bytes", f->max_line);
            return -1;
        }
        if (nl == NULL) {
            buf_append(&f->line, data + off, chunk);
            return 0;
        }
        int rc;
        if (f->line.len == 0) {
            rc = frame_line(f, data + off, chunk, cb, ud, err, errlen); /* whole line in this chunk */
        } else {
            buf_append(&f->line, data + off, chunk);
            rc = frame_line(f, f->line.data, f->line.len, cb, ud, err, errlen);
            buf_reset(&f->line);
        }
        off += chunk + 1;
        if (rc != 0)
            return rc;
    }
    return 0;
}
