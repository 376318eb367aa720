/* leader: Lease leader election in its own thread. See leader.h.
 *
 * The election thread owns the kube_client, the last Lease object and the
 * observation state; the other threads see only the atomic leadership
 * deadline and, under the mutex, the stop flag and the observed holder. */
#include "leader.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "health.h"
#include "json.h"
#include "log.h"
#include "util.h"

enum attempt {
    ATTEMPT_OK,     /* we hold the Lease, just written */
    ATTEMPT_FAILED, /* transport error, timeout, conflict, unexpected status */
    ATTEMPT_HELD    /* another holder's record has not expired */
};

struct leader {
    /* Immutable after leader_start. */
    char *namespace, *lease_name, *identity;
    char *lease_path, *leases_path;
    int lease_duration_s;
    uint64_t renew_deadline_ms, retry_ms;
    int request_timeout_ms; /* min(kube_timeout_ms, renew deadline) */
    leader_change_cb cb;
    void *ud;
    int disabled;

    /* Shared. 0 = not leader; UINT64_MAX = always (election disabled);
     * else the monotonic ms at which leadership ends unless renewed. */
    _Atomic uint64_t leading_until_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping, release; /* under mu */
    char *holder;          /* under mu: holderIdentity last observed, NULL before */
    char *release_token;   /* under mu: LEADER_RELEASE_ANNOTATION last observed */
    pthread_t thread;

    /* Election thread only. */
    kube_client *client;
    int leading;
    json_value *lease;     /* the Lease as last read or written */
    char *observed_key;    /* its spec fields, to notice a change */
    uint64_t observed_ms;  /* when the record last changed, by our clock */
    char *last_failure;    /* to log each distinct failure once while acquiring */
    int loop_stalled;      /* the main loop's heartbeat is stale (health.h) */
};

typedef struct lease_record {
    const char *holder;       /* borrowed from the DOM; "" when absent */
    const char *acquire_time; /* may be NULL */
    const char *renew_time;   /* may be NULL */
    int duration_s;           /* 0 when absent */
    long transitions;
} lease_record;

static void record_of(const json_value *lease, lease_record *r)
{
    const json_value *spec = json_get(lease, "spec");
    const char *holder = json_string(json_get(spec, "holderIdentity"));
    r->holder = holder ? holder : "";
    r->acquire_time = json_string(json_get(spec, "acquireTime"));
    r->renew_time = json_string(json_get(spec, "renewTime"));
    r->duration_s = (int)json_number(json_get(spec, "leaseDurationSeconds"), 0);
    r->transitions = (long)json_number(json_get(spec, "leaseTransitions"), 0);
}

/* RFC 3339 with microseconds, as metav1.MicroTime: 2026-11-26T08:30:00.000000Z */
static void micro_time(uint64_t wall_ms, char *out, size_t outlen)
{
    time_t secs = (time_t)(wall_ms / 1000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, outlen, "%s.%06uZ", date, (unsigned)(wall_ms % 1000u) * 1000u);
}

/* A whole Lease for PUT (base = the current object: its metadata, with the
 * resourceVersion, is kept, minus managedFields) or POST (base NULL). The
 * spec is replaced as a whole, like client-go's LeaseLock. Caller frees. */
static char *lease_body(const leader *l, const json_value *base, const char *holder, int duration_s,
                        const char *acquire_time, const char *renew_time, long transitions)
{
    buf b = {0};
    json_out o;
    jo_init(&o, &b);
    jo_object(&o);
    jo_kstr(&o, "apiVersion", "coordination.k8s.io/v1");
    jo_kstr(&o, "kind", "Lease");
    jo_key(&o, "metadata");
    jo_object(&o);
    const json_value *meta = json_get(base, "metadata");
    if (meta) {
        for (size_t i = 0; i < json_len(meta); i++) {
            const char *key = json_key_at(meta, i);
            if (strcmp(key, "managedFields") == 0)
                continue;
            jo_key(&o, key);
            jo_value(&o, json_at(meta, i));
        }
    } else {
        jo_kstr(&o, "name", l->lease_name);
        jo_kstr(&o, "namespace", l->namespace);
    }
    jo_end(&o);
    jo_key(&o, "spec");
    jo_object(&o);
    jo_kstr(&o, "holderIdentity", holder);
    jo_kint(&o, "leaseDurationSeconds", duration_s);
    jo_kstr(&o, "acquireTime", acquire_time);
    jo_kstr(&o, "renewTime", renew_time);
    jo_kint(&o, "leaseTransitions", transitions);
    jo_end(&o);
    jo_end(&o);
    return buf_steal(&b);
}

/* Takes ownership of lease (parsed from a response) as the current object.
 * A record that differs from the last one observed restarts the expiry
 * clock: the holder is alive as long as it keeps changing the record. */
static void observe(leader *l, json_value *lease, uint64_t now_ms)
{
    lease_record r;
    record_of(lease, &r);
    char *key = xasprintf("%s|%s|%s|%d|%ld", r.holder, r.acquire_time ? r.acquire_time : "",
                          r.renew_time ? r.renew_time : "", r.duration_s, r.transitions);
    if (l->observed_key == NULL || strcmp(key, l->observed_key) != 0) {
        free(l->observed_key);
        l->observed_key = key;
        l->observed_ms = now_ms;
    } else {
        free(key);
    }

    int changed = 0;
    const char *release = json_string(json_path(lease, "metadata", "annotations", LEADER_RELEASE_ANNOTATION, NULL));
    pthread_mutex_lock(&l->mu);
    if (l->holder == NULL || strcmp(l->holder, r.holder) != 0) {
        free(l->holder);
        l->holder = xstrdup(r.holder);
        changed = 1;
    }
    if (release && (l->release_token == NULL || strcmp(l->release_token, release) != 0)) {
        free(l->release_token);
        l->release_token = xstrdup(release);
    }
    pthread_mutex_unlock(&l->mu);
    if (changed && *r.holder && strcmp(r.holder, l->identity) != 0)
        log_info("leader election: lease held by another candidate", "lease", l->lease_name,
                 "holder", r.holder, NULL);

    json_free(l->lease);
    l->lease = lease;
}

/* One request, its timeout capped by deadline_ms (monotonic). 0 with *resp
 * filled (any status), -1 with err on a transport failure or no time left. */
static int lease_request(leader *l, const char *method, const char *path, const char *body,
                         uint64_t deadline_ms, kube_response *resp, char *err, size_t errlen)
{
    uint64_t now = util_now_ms();
    memset(resp, 0, sizeof *resp);
    if (now + 50 >= deadline_ms) {
        util_seterr(err, errlen, "%s %s: no time left before the deadline", method, path);
        return -1;
    }
    uint64_t left = deadline_ms - now;
    int timeout = left < (uint64_t)l->request_timeout_ms ? (int)left : l->request_timeout_ms;
    return kube_request(l->client, method, path, NULL, body, body ? strlen(body) : 0, timeout, resp,
                        err, errlen);
}

/* Writes the record: PUT over base (with its resourceVersion) or POST when
 * base is NULL. On success the returned object becomes l->lease, which may
 * free base. */
static enum attempt write_lease(leader *l, const json_value *base, const char *holder, int duration_s,
                                const char *acquire_time, const char *renew_time, long transitions,
                                uint64_t deadline_ms, char *err, size_t errlen)
{
    kube_response resp;
    enum attempt rc = ATTEMPT_FAILED;
    char *body = lease_body(l, base, holder, duration_s, acquire_time, renew_time, transitions);
    const char *method = base ? "PUT" : "POST";
    const char *path = base ? l->lease_path : l->leases_path;

    if (lease_request(l, method, path, body, deadline_ms, &resp, err, errlen) < 0)
        goto out;
    if (resp.status == 200 || resp.status == 201) {
        json_value *lease = json_parse(resp.body, resp.len, NULL, 0);
        if (lease == NULL) {
            util_seterr(err, errlen, "%s %s: response is not JSON", method, path);
            goto out;
        }
        observe(l, lease, util_now_ms());
        rc = ATTEMPT_OK;
    } else {
        char what[256];
        util_seterr(err, errlen, "%s %s: %s", method, path, kube_response_error(&resp, what, sizeof what));
    }
out:
    kube_response_free(&resp);
    free(body);
    return rc;
}

/* Claims base for us: a renew keeps acquireTime and leaseTransitions, a
 * takeover counts a transition. base NULL creates the Lease. */
static enum attempt claim(leader *l, const json_value *base, uint64_t deadline_ms, char *err,
                          size_t errlen)
{
    char now[40];
    lease_record old;
    micro_time(util_wall_ms(), now, sizeof now);
    record_of(base, &old);
    int ours = strcmp(old.holder, l->identity) == 0;
    const char *acquired = ours && old.acquire_time ? old.acquire_time : now;
    long transitions = base == NULL ? 0 : ours ? old.transitions : old.transitions + 1;
    return write_lease(l, base, l->identity, l->lease_duration_s, acquired, now, transitions,
                       deadline_ms, err, errlen);
}

/* client-go's tryAcquireOrRenew. While leading, first the fast path: update
 * the object we wrote last; on any failure read the Lease and decide again. */
static enum attempt try_acquire_or_renew(leader *l, uint64_t deadline_ms, char *err, size_t errlen)
{
    kube_response resp;
    enum attempt rc = ATTEMPT_FAILED;

    if (l->leading && l->lease) {
        if (claim(l, l->lease, deadline_ms, err, errlen) == ATTEMPT_OK)
            return ATTEMPT_OK;
        log_debug("leader election: fast renew failed, re-reading the lease", "lease", l->lease_name,
                  "error", err, NULL);
    }
    if (lease_request(l, "GET", l->lease_path, NULL, deadline_ms, &resp, err, errlen) < 0)
        goto out;
    if (resp.status == 404) {
        rc = claim(l, NULL, deadline_ms, err, errlen); /* 409: another candidate created it first */
        goto out;
    }
    if (resp.status != 200) {
        char what[256];
        util_seterr(err, errlen, "GET %s: %s", l->lease_path, kube_response_error(&resp, what, sizeof what));
        goto out;
    }
    json_value *lease = json_parse(resp.body, resp.len, NULL, 0);
    if (lease == NULL) {
        util_seterr(err, errlen, "GET %s: response is not JSON", l->lease_path);
        goto out;
    }
    uint64_t now = util_now_ms();
    observe(l, lease, now);

    lease_record cur;
    record_of(l->lease, &cur);
    uint64_t duration_ms = (uint64_t)(cur.duration_s > 0 ? cur.duration_s : l->lease_duration_s) * 1000u;
    if (*cur.holder && strcmp(cur.holder, l->identity) != 0 && l->observed_ms + duration_ms > now) {
        util_seterr(err, errlen, "lease held by %s", cur.holder);
        rc = ATTEMPT_HELD;
        goto out;
    }
    rc = claim(l, l->lease, deadline_ms, err, errlen); /* 409: changed since the GET */
out:
    kube_response_free(&resp);
    return rc;
}

/* ---- transitions ------------------------------------------------------- */

static void become_leader(leader *l, uint64_t until_ms)
{
    lease_record r;
    char transitions[32];
    record_of(l->lease, &r);
    snprintf(transitions, sizeof transitions, "%ld", r.transitions);
    l->leading = 1;
    atomic_store(&l->leading_until_ms, until_ms);
    log_info("became leader", "lease", l->lease_name, "namespace", l->namespace, "identity",
             l->identity, "lease_transitions", transitions, NULL);
    if (l->cb)
        l->cb(1, l->ud);
}

/* Writes stop first (the atomic), then tells. */
static void lose_leadership(leader *l, const char *reason)
{
    atomic_store(&l->leading_until_ms, 0);
    l->leading = 0;
    log_warn("lost leadership", "lease", l->lease_name, "identity", l->identity, "reason", reason, NULL);
    if (l->cb)
        l->cb(0, l->ud);
}

/* ReleaseOnCancel: an empty holder lets any candidate take the Lease at its
 * next retry without waiting for expiry; leaseDurationSeconds 1 does the
 * same for candidates that only look at the time. Guarded by the
 * resourceVersion; on a conflict re-read once and retry if it is still ours. */
static void release_lease(leader *l, uint64_t deadline_ms)
{
    char err[512], now[40];
    kube_response resp = {0};

    for (int attempt = 0; attempt < 2; attempt++) {
        lease_record r;
        record_of(l->lease, &r);
        if (l->lease == NULL || strcmp(r.holder, l->identity) != 0) {
            log_info("leader election: lease not ours any more, nothing to release", "lease",
                     l->lease_name, NULL);
            goto out;
        }
        micro_time(util_wall_ms(), now, sizeof now);
        if (write_lease(l, l->lease, "", 1, now, now, r.transitions, deadline_ms, err, sizeof err) ==
            ATTEMPT_OK) {
            log_info("released lease", "lease", l->lease_name, "namespace", l->namespace, "identity",
                     l->identity, NULL);
            goto out;
        }
        log_warn("leader election: failed to release the lease", "lease", l->lease_name, "error", err,
                 NULL);
        if (attempt == 1 || lease_request(l, "GET", l->lease_path, NULL, deadline_ms, &resp, err,
                                          sizeof err) < 0 || resp.status != 200)
            goto out;
        json_value *lease = json_parse(resp.body, resp.len, NULL, 0);
        if (lease == NULL)
            goto out;
        observe(l, lease, util_now_ms());
        kube_response_free(&resp);
    }
out:
    kube_response_free(&resp);
}

/* ---- the election thread ----------------------------------------------- */

/* Waits until wake_ms (monotonic) or a stop; returns 1 when stopping. */
static int wait_until(leader *l, uint64_t wake_ms)
{
    struct timespec ts = {.tv_sec = (time_t)(wake_ms / 1000u),
                          .tv_nsec = (long)(wake_ms % 1000u) * 1000000L};
    pthread_mutex_lock(&l->mu);
    while (!l->stopping && util_now_ms() < wake_ms)
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
    int stopping = l->stopping;
    pthread_mutex_unlock(&l->mu);
    return stopping;
}

static int stop_requested(leader *l, int *release)
{
    pthread_mutex_lock(&l->mu);
    int stopping = l->stopping;
    if (release)
        *release = l->release;
    pthread_mutex_unlock(&l->mu);
    return stopping;
}

static void log_failure(leader *l, const char *err)
{
    if (l->last_failure && strcmp(l->last_failure, err) == 0)
        return;
    free(l->last_failure);
    l->last_failure = xstrdup(err);
    log_warn("leader election: cannot acquire the lease", "lease", l->lease_name, "error", err, NULL);
}

static void *leader_thread(void *arg)
{
    leader *l = arg;
    char err[512];
    uint64_t next_ms = util_now_ms();
    int release = 0;

    for (;;) {
        uint64_t until = atomic_load(&l->leading_until_ms);
        uint64_t wake = l->leading && until < next_ms ? until : next_ms;
        if (wait_until(l, wake))
            break;
        uint64_t start = util_now_ms();
        if (l->leading && start >= until) {
            lose_leadership(l, "renew deadline passed without a successful renew");
            /* Read again at once: if the record is still ours, nobody took
             * it and we may simply renew it. */
        } else if (start < next_ms) {
            continue;
        }
        uint64_t deadline = l->leading ? until : start + (uint64_t)l->request_timeout_ms;
        next_ms = start + l->retry_ms;
        if (!health_loop_alive()) {
            /* The main loop is stuck (a frozen database call, a runaway pass):
             * neither renew nor take the Lease, so that a live replica takes
             * over (client-go's leader-election healthz adaptor). The
             * leadership deadline above ends our leadership meanwhile. */
            if (!l->loop_stalled) {
                char age[32];
                snprintf(age, sizeof age, "%lu", health_beat_age_ms());
                log_warn("leader election: the main loop is stalled; not renewing the lease", "lease",
                         l->lease_name, "stalled_ms", age, NULL);
            }
            l->loop_stalled = 1;
            continue;
        }
        if (l->loop_stalled)
            log_info("leader election: the main loop is live again", "lease", l->lease_name, NULL);
        l->loop_stalled = 0;
        enum attempt r = try_acquire_or_renew(l, deadline, err, sizeof err);
        if (r == ATTEMPT_OK) {
            free(l->last_failure);
            l->last_failure = NULL;
            if (l->leading || stop_requested(l, NULL)) {
                /* A renew; or won while stopping: no announcement, the
                 * exit path below releases it. */
                l->leading = 1;
                atomic_store(&l->leading_until_ms, start + l->renew_deadline_ms);
            } else {
                become_leader(l, start + l->renew_deadline_ms);
            }
        } else if (l->leading && r == ATTEMPT_HELD) {
            lose_leadership(l, err);
        } else if (l->leading) {
            log_warn("leader election: renew failed", "lease", l->lease_name, "error", err, NULL);
        } else if (r == ATTEMPT_FAILED) {
            log_failure(l, err);
        }
    }

    stop_requested(l, &release);
    if (l->leading) {
        uint64_t until = atomic_load(&l->leading_until_ms);
        atomic_store(&l->leading_until_ms, 0); /* no writes from here on */
        l->leading = 0;
        if (release)
            release_lease(l, until);
        else
            log_info("leader election stopped without releasing the lease", "lease", l->lease_name,
                     NULL);
    }
    return NULL;
}

/* ---- public API -------------------------------------------------------- */

static void leader_free(leader *l)
{
    kube_client_free(l->client);
    json_free(l->lease);
    free(l->observed_key);
    free(l->last_failure);
    free(l->holder);
    free(l->release_token);
    free(l->namespace);
    free(l->lease_name);
    free(l->identity);
    free(l->lease_path);
    free(l->leases_path);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

leader *leader_start(const config *cfg, const kube_config *kc, leader_change_cb cb, void *ud,
                     char *err, size_t errlen)
{
    pthread_condattr_t cattr;
    sigset_t all, old;
    char *ns = NULL, *name = NULL;

    if (cfg->identity == NULL || *cfg->identity == '\0') {
        util_seterr(err, errlen, "leader election: no identity");
        return NULL;
    }
    leader *l = xcalloc(1, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC); /* wait_until uses util_now_ms */
    pthread_cond_init(&l->cv, &cattr);
    pthread_condattr_destroy(&cattr);
    l->identity = xstrdup(cfg->identity);
    l->cb = cb;
    l->ud = ud;

    if (!cfg->leader_elect) {
        l->disabled = 1;
        atomic_store(&l->leading_until_ms, UINT64_MAX);
        l->holder = xstrdup(l->identity);
        log_info("leader election disabled: acting as leader", "identity", l->identity, NULL);
        if (cb)
            cb(1, ud);
        return l;
    }

    if (cfg->namespace == NULL || *cfg->namespace == '\0' || cfg->lease_name == NULL ||
        *cfg->lease_name == '\0') {
        util_seterr(err, errlen, "leader election: namespace and lease name are required");
        goto err;
    }
    if (cfg->lease_duration_s <= 0 || cfg->retry_period_s <= 0 ||
        cfg->renew_deadline_s >= cfg->lease_duration_s || cfg->retry_period_s >= cfg->renew_deadline_s) {
        util_seterr(err, errlen,
                    "leader election: need 0 < retry period (%d s) < renew deadline (%d s) < lease "
                    "duration (%d s)",
                    cfg->retry_period_s, cfg->renew_deadline_s, cfg->lease_duration_s);
        goto err;
    }
    l->namespace = xstrdup(cfg->namespace);
    l->lease_name = xstrdup(cfg->lease_name);
    l->lease_duration_s = cfg->lease_duration_s;
    l->renew_deadline_ms = (uint64_t)cfg->renew_deadline_s * 1000u;
    l->retry_ms = (uint64_t)cfg->retry_period_s * 1000u;
    l->request_timeout_ms = cfg->kube_timeout_ms > 0 ? cfg->kube_timeout_ms : KUBE_DEFAULT_TIMEOUT_MS;
    if ((uint64_t)l->request_timeout_ms > l->renew_deadline_ms)
        l->request_timeout_ms = (int)l->renew_deadline_ms;
    ns = kube_escape(l->namespace);
    name = kube_escape(l->lease_name);
    l->leases_path = xasprintf("/apis/coordination.k8s.io/v1/namespaces/%s/leases", ns);
    l->lease_path = xasprintf("%s/%s", l->leases_path, name);

    char cerr[256];
    l->client = kube_client_new(kc, cerr, sizeof cerr);
    if (l->client == NULL) {
        util_seterr(err, errlen, "leader election: %s", cerr);
        goto err;
    }

    /* Signals are for the main loop, not for this thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int prc = pthread_create(&l->thread, NULL, leader_thread, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc != 0) {
        util_seterr(err, errlen, "leader election: cannot start thread: %s", strerror(prc));
        goto err;
    }
    log_info("leader election started", "lease", l->lease_name, "namespace", l->namespace, "identity",
             l->identity, NULL);
    free(ns);
    free(name);
    return l;
err:
    free(ns);
    free(name);
    leader_free(l);
    return NULL;
}

int leader_is_leader(const leader *l)
{
    uint64_t until = atomic_load(&l->leading_until_ms);
    return until == UINT64_MAX || (until != 0 && util_now_ms() < until);
}

const char *leader_holder(leader *l, char *out, size_t outlen)
{
    pthread_mutex_lock(&l->mu);
    util_seterr(out, outlen, "%s", l->holder ? l->holder : "");
    pthread_mutex_unlock(&l->mu);
    return out;
}

const char *leader_release_token(leader *l, char *out, size_t outlen)
{
    pthread_mutex_lock(&l->mu);
    util_seterr(out, outlen, "%s", l->release_token ? l->release_token : "");
    pthread_mutex_unlock(&l->mu);
    return out;
}

void leader_stop(leader *l, int release)
{
    if (l == NULL)
        return;
    if (!l->disabled) {
        pthread_mutex_lock(&l->mu);
        l->stopping = 1;
        l->release = release;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
    }
    leader_free(l);
}
