/* cache: see cache.h. One list+watch state machine per kind. */
#define _GNU_SOURCE /* strptime, timegm */
#include "cache.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "ownership.h"
#include "util.h"

#define PAGE_LIMIT 500
#define WATCH_TIMEOUT_S 300

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

void obs_deploy_free(obs_deploy *d)
{
    xlong_free(d); /* one block: see cache_parse_deployment */
}

void obs_pod_free(obs_pod *p)
{
    if (p == NULL)
        return;
    free(p->name);
    free(p->instance);
    free(p->phase);
    free(p->waiting_reason);
    free(p);
}

/* One allocation per Deployment: the struct, the annotation arrays and every
 * string (10,000 workers fit in a few MiB; see docs/benchmarks.md). */
/* The annotation keys the rules use, shared instead of copied per entry. */
static const char *const known_keys[] = {ACCOUNT_ANNOTATION, APPLIED_HASH_ANNOTATION,
                                         "sync-airbnb.io/credentials-seen", "sync-airbnb.io/last-sync-at"};

static const char *known_key(const char *k)
{
    for (size_t i = 0; i < sizeof known_keys / sizeof known_keys[0]; i++)
        if (strcmp(k, known_keys[i]) == 0)
            return known_keys[i];
    return NULL;
}

/* The fieldManager of the operator's writes (controller.c). */
#define FIELD_MANAGER "sync-airbnb-operator"

/* 1 if a field manager other than ours changed the spec (not the status): a
 * hand edit (kubectl scale, set image, edit). Our own apply takes those fields
 * back, so after a restore the entry is gone. This is how a restarted operator
 * sees edits made while it was not running, which the generation cannot tell. */
static int foreign_spec_edit(const json_value *meta)
{
    const json_value *mf = json_get(meta, "managedFields");
    for (size_t i = 0; i < json_len(mf); i++) {
        const json_value *e = json_at(mf, i);
        const char *manager = json_string(json_get(e, "manager"));
        const char *sub = json_string(json_get(e, "subresource"));
        if ((manager && strcmp(manager, FIELD_MANAGER) == 0) || (sub && strcmp(sub, "status") == 0))
            continue;
        if (json_get(json_get(e, "fieldsV1"), "f:spec"))
            return 1;
    }
    return 0;
}

unsigned long long cache_resource_version(const json_value *obj)
{
    const char *rv = json_string(json_path(obj, "metadata", "resourceVersion", NULL));
    if (rv == NULL || *rv < '0' || *rv > '9')
        return 0;
    char *end;
    unsigned long long n = strtoull(rv, &end, 10);
    return *end == '\0' ? n : 0;
}

static void deploy_digest(obs_deploy *d)
{
    buf b = {0};
    const char *parts[] = {d->name, d->applied_hash ? d->applied_hash : "", d->fingerprint ? d->fingerprint : ""};
    for (size_t k = 0; k < 3; k++) {
        buf_puts(&b, parts[k]);
        buf_putc(&b, '\x02');
    }
    char num[24];
    int n = snprintf(num, sizeof num, "%ld", d->generation);
    buf_append(&b, num, (size_t)n);
    for (int k = 0; k < d->nann; k++) {
        buf_putc(&b, '\x02');
        buf_puts(&b, d->ann_keys[k]);
        buf_putc(&b, '=');
        buf_puts(&b, d->ann_values[k]);
    }
    unsigned char md[32];
    util_sha256(b.data, b.len, md);
    buf_free(&b);
    memcpy(d->digest, md, sizeof d->digest);
}

obs_deploy *cache_parse_deployment(const json_value *obj)
{
    const json_value *meta = json_get(obj, "metadata");
    const char *name = json_string(json_get(meta, "name"));
    if (name == NULL)
        return NULL;
    const json_value *ann = json_get(meta, "annotations");
    const char *uid = json_string(json_get(meta, "uid"));
    const char *fp = json_string(
        json_path(obj, "spec", "template", "metadata", "annotations", FINGERPRINT_ANNOTATION, NULL));
    size_t nann = 0, bytes = strlen(name) + 1 + (uid ? strlen(uid) + 1 : 0) + (fp ? strlen(fp) + 1 : 0);
    for (size_t i = 0; i < json_len(ann); i++) {
        const char *k = json_key_at(ann, i), *v = json_string(json_at(ann, i));
        if (v && strncmp(k, "sync-airbnb.io/", 15) == 0) {
            nann++;
            bytes += (known_key(k) ? 0 : strlen(k) + 1) + strlen(v) + 1;
        }
    }
    obs_deploy *d = xlong_alloc(sizeof *d + 2 * nann * sizeof(char *) + bytes);
    char **arrays = (char **)(d + 1);
    char *p = (char *)(arrays + 2 * nann);
#define PACK(dst, src)                      \
    do {                                    \
        size_t n_ = strlen(src) + 1;        \
        memcpy(p, (src), n_);               \
        (dst) = p;                          \
        p += n_;                            \
    } while (0)
    PACK(d->name, name);
    if (uid)
        PACK(d->uid, uid);
    if (fp)
        PACK(d->fingerprint, fp);
    d->ann_keys = arrays;
    d->ann_values = arrays + nann;
    for (size_t i = 0; i < json_len(ann); i++) {
        const char *k = json_key_at(ann, i), *v = json_string(json_at(ann, i));
        if (v == NULL || strncmp(k, "sync-airbnb.io/", 15) != 0)
            continue;
        const char *shared = known_key(k);
        if (shared)
            d->ann_keys[d->nann] = (char *)shared;
        else
            PACK(d->ann_keys[d->nann], k);
        PACK(d->ann_values[d->nann], v);
        if (strcmp(k, ACCOUNT_ANNOTATION) == 0)
            d->account_id = d->ann_values[d->nann];
        else if (strcmp(k, APPLIED_HASH_ANNOTATION) == 0)
            d->applied_hash = d->ann_values[d->nann];
        d->nann++;
    }
#undef PACK
    const char *mb = json_string(json_path(meta, "labels", MANAGED_BY_LABEL, NULL));
    d->managed = mb && strcmp(mb, MANAGED_BY_VALUE) == 0;
    d->update_owned = d->managed && own_has_update_entry(meta);
    d->own_rename_at = d->update_owned ? (int)own_rename_index(meta) : -1;
    d->generation = (long)json_number(json_get(meta, "generation"), 0);
    d->resource_version = cache_resource_version(obj);
    /* A hint for first sight (upsert): edited by hand, so not what we applied. */
    if (d->generation > 1 && foreign_spec_edit(meta))
        d->applied_generation = d->generation - 1;
    const json_value *st = json_get(obj, "status");
    d->observed_generation = (long)json_number(json_get(st, "observedGeneration"), 0);
    d->replicas = (int)json_number(json_get(st, "replicas"), 0);
    d->ready_replicas = (int)json_number(json_get(st, "readyReplicas"), 0);
    d->updated_replicas = (int)json_number(json_get(st, "updatedReplicas"), 0);
    d->available_replicas = (int)json_number(json_get(st, "availableReplicas"), 0);
    deploy_digest(d);
    return d;
}

obs_pod *cache_parse_pod(const json_value *obj)
{
    const json_value *meta = json_get(obj, "metadata");
    const char *name = json_string(json_get(meta, "name"));
    if (name == NULL)
        return NULL;
    obs_pod *p = xcalloc(1, sizeof *p);
    p->name = xstrdup(name);
    p->instance = dup_or_null(json_string(json_path(meta, "labels", INSTANCE_LABEL, NULL)));
    const char *created = json_string(json_get(meta, "creationTimestamp"));
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (created && strptime(created, "%Y-%m-%dT%H:%M:%SZ", &tm) != NULL)
        p->created_unix_s = (long long)timegm(&tm);
    const json_value *st = json_get(obj, "status");
    p->phase = dup_or_null(json_string(json_get(st, "phase")));
    const json_value *conds = json_get(st, "conditions");
    for (size_t i = 0; i < json_len(conds); i++) {
        const json_value *c = json_at(conds, i);
        const char *type = json_string(json_get(c, "type"));
        const char *status = json_string(json_get(c, "status"));
        if (type && status && strcmp(type, "Ready") == 0)
            p->ready = strcmp(status, "True") == 0;
    }
    const json_value *cs = json_get(st, "containerStatuses");
    for (size_t i = 0; i < json_len(cs); i++) {
        const json_value *c = json_at(cs, i);
        p->restarts += (int)json_number(json_get(c, "restartCount"), 0);
        const char *reason = json_string(json_path(c, "state", "waiting", "reason", NULL));
        if (reason && p->waiting_reason == NULL)
            p->waiting_reason = xstrdup(reason);
    }
    if (p->waiting_reason)
        p->waiting_since_ms = util_now_ms();
    return p;
}

void cache_free_deployments(strmap *m)
{
    size_t it = 0;
    void *v;
    while (strmap_next(m, &it, NULL, &v))
        obs_deploy_free(v);
    strmap_free(m);
}

void cache_free_pods(strmap *m)
{
    size_t it = 0;
    void *v;
    while (strmap_next(m, &it, NULL, &v))
        obs_pod_free(v);
    strmap_free(m);
}

/* ---- list + watch ------------------------------------------------------- */

typedef struct informer {
    struct cache *owner;
    enum cache_kind kind;
    const char *resource_path; /* e.g. /apis/apps/v1/namespaces/ns/deployments */
    char *base;                /* resource path + ?labelSelector=... */
    strmap items;
    char *resource_version;
    kube_watch *watch;
    uv_timer_t *retry; /* own allocation: closes asynchronously */
    int synced, listing, relist, failures, closing;
} informer;

struct cache {
    kube_async *async;
    char *ns;
    cache_change_cb cb;
    void *ud;
    informer deploy, pods;
    char *last_error;
};

static void informer_list(informer *inf, const char *cont);
static void informer_watch(informer *inf);

static void set_error(cache *c, const char *msg)
{
    free(c->last_error);
    c->last_error = msg ? xstrdup(msg) : NULL;
}

static void *parse_item(informer *inf, const json_value *obj)
{
    return inf->kind == CACHE_DEPLOYMENT ? (void *)cache_parse_deployment(obj)
                                         : (void *)cache_parse_pod(obj);
}

static void free_item(informer *inf, void *v)
{
    if (inf->kind == CACHE_DEPLOYMENT)
        obs_deploy_free(v);
    else
        obs_pod_free(v);
}

static const char *item_name(informer *inf, void *v)
{
    return inf->kind == CACHE_DEPLOYMENT ? ((obs_deploy *)v)->name : ((obs_pod *)v)->name;
}

/* Stores item (taking ownership), keeping what only we know (applied
 * generation), and tells the owner. */
static void upsert(informer *inf, void *item)
{
    const char *name = item_name(inf, item);
    void *old = strmap_get(&inf->items, name);
    if (inf->kind == CACHE_DEPLOYMENT) {
        obs_deploy *d = item, *o = old;
        d->seen = 1;
        int foreign = d->applied_generation != 0; /* cache_parse_deployment's hand-edit hint */
        /* First sight (start-up): the live object is what we applied, unless
         * it shows a hand edit. Later: a spec change that no other field
         * manager made was applied by this operator's field manager — our own
         * write (expect.c sets the same on its echo) or, seen from a standby,
         * the leader's: not drift, or a new leader would apply every worker
         * the old one changed once more. */
        if (o && !foreign && d->generation > o->generation)
            d->applied_generation = d->generation;
        else if (o)
            d->applied_generation = o->applied_generation;
        else if (d->applied_generation == 0)
            d->applied_generation = d->generation;
    } else {
        obs_pod *p = item, *o = old;
        p->seen = 1;
        /* Still waiting for the same reason: since it was first seen. */
        if (o && p->waiting_reason && o->waiting_reason && strcmp(p->waiting_reason, o->waiting_reason) == 0)
            p->waiting_since_ms = o->waiting_since_ms;
    }
    strmap_put(&inf->items, name, item);
    if (inf->owner->cb)
        inf->owner->cb(inf->kind, name, old, item, inf->owner->ud);
    free_item(inf, old);
}

static void remove_item(informer *inf, const char *name)
{
    void *old = strmap_del(&inf->items, name);
    if (old == NULL)
        return;
    char *key = xstrdup(name);
    if (inf->owner->cb)
        inf->owner->cb(inf->kind, key, old, NULL, inf->owner->ud);
    free_item(inf, old);
    free(key);
}

static void schedule(informer *inf, void (*fn)(uv_timer_t *), int failed)
{
    if (inf->closing)
        return;
    uint64_t delay = 0;
    if (failed) {
        inf->failures++;
        delay = 500u << (inf->failures < 6 ? inf->failures : 6); /* 1 s .. 32 s */
        delay += (uint64_t)(rand() % 250);
    } else {
        inf->failures = 0;
    }
    uv_timer_start(inf->retry, fn, delay, 0);
}

static void relist_timer(uv_timer_t *t)
{
    informer *inf = t->data;
    informer_list(inf, NULL);
}

static void rewatch_timer(uv_timer_t *t)
{
    informer *inf = t->data;
    if (inf->relist)
        informer_list(inf, NULL);
    else
        informer_watch(inf);
}

static void on_list(const kube_response *resp, const char *terr, void *ud)
{
    informer *inf = ud;
    cache *c = inf->owner;
    char err[512];
    inf->listing = 0;
    if (inf->closing)
        return;
    if (resp == NULL || resp->status != 200) {
        if (resp)
            kube_response_error(resp, err, sizeof err);
        else
            util_seterr(err, sizeof err, "%s", terr);
        log_warn("list failed; retrying", "resource", inf->resource_path, "error", err, NULL);
        set_error(c, err);
        schedule(inf, relist_timer, 1);
        return;
    }
    json_value *doc = json_parse(resp->body, resp->len, err, sizeof err);
    if (doc == NULL) {
        set_error(c, err);
        schedule(inf, relist_timer, 1);
        return;
    }
    const json_value *items = json_get(doc, "items");
    for (size_t i = 0; i < json_len(items); i++) {
        void *item = parse_item(inf, json_at(items, i));
        if (item)
            upsert(inf, item);
    }
    const char *cont = json_string(json_path(doc, "metadata", "continue", NULL));
    if (cont && *cont) {
        char *copy = xstrdup(cont);
        json_free(doc);
        informer_list(inf, copy);
        free(copy);
        return;
    }
    free(inf->resource_version);
    inf->resource_version = dup_or_null(json_string(json_path(doc, "metadata", "resourceVersion", NULL)));
    json_free(doc);

    /* Sweep what the list no longer has (deleted while we were not watching). */
    size_t it = 0;
    const char *k;
    void *v;
    char **gone = NULL;
    size_t ngone = 0;
    while (strmap_next(&inf->items, &it, &k, &v)) {
        int *seen = inf->kind == CACHE_DEPLOYMENT ? &((obs_deploy *)v)->seen : &((obs_pod *)v)->seen;
        if (!*seen) {
            gone = xrealloc(gone, (ngone + 1) * sizeof *gone);
            gone[ngone++] = xstrdup(k);
        }
        *seen = 0;
    }
    for (size_t i = 0; i < ngone; i++) {
        remove_item(inf, gone[i]);
        free(gone[i]);
    }
    free(gone);
    inf->synced = 1;
    inf->relist = 0;
    inf->failures = 0;
    set_error(c, NULL);
    log_debug("list complete", "resource", inf->resource_path, "resourceVersion",
              inf->resource_version ? inf->resource_version : "", NULL);
    if (c->cb)
        c->cb(inf->kind, NULL, NULL, NULL, c->ud);
    informer_watch(inf);
}

static void informer_list(informer *inf, const char *cont)
{
    if (inf->closing)
        return;
    if (cont == NULL) { /* a fresh list: mark everything unseen */
        size_t it = 0;
        void *v;
        while (strmap_next(&inf->items, &it, NULL, &v)) {
            if (inf->kind == CACHE_DEPLOYMENT)
                ((obs_deploy *)v)->seen = 0;
            else
                ((obs_pod *)v)->seen = 0;
        }
    }
    buf path = {0};
    buf_printf(&path, "%s&limit=%d", inf->base, PAGE_LIMIT);
    if (cont) {
        char *e = kube_escape(cont);
        buf_printf(&path, "&continue=%s", e);
        free(e);
    }
    inf->listing = 1;
    kube_async_request(inf->owner->async, "GET", path.data, NULL, NULL, 0, 0, on_list, inf);
    buf_free(&path);
}

static void on_watch_event(const char *type, const char *object_json, size_t len, void *ud)
{
    informer *inf = ud;
    char err[256];
    json_value *obj = json_parse(object_json, len, err, sizeof err);
    if (obj == NULL)
        return;
    const char *rv = json_string(json_path(obj, "metadata", "resourceVersion", NULL));
    if (strcmp(type, "ERROR") == 0) {
        long code = (long)json_number(json_get(obj, "code"), 0);
        const char *msg = json_string(json_get(obj, "message"));
        log_info("watch error event", "resource", inf->resource_path, "code",
                 code == 410 ? "410" : "other", "message", msg ? msg : "", NULL);
        if (code == 410)
            inf->relist = 1;
        json_free(obj);
        return;
    }
    if (rv) {
        free(inf->resource_version);
        inf->resource_version = xstrdup(rv);
    }
    if (strcmp(type, "ADDED") == 0 || strcmp(type, "MODIFIED") == 0) {
        void *item = parse_item(inf, obj);
        if (item)
            upsert(inf, item);
    } else if (strcmp(type, "DELETED") == 0) {
        const char *name = json_string(json_path(obj, "metadata", "name", NULL));
        if (name)
            remove_item(inf, name);
    }
    json_free(obj);
}

static void on_watch_end(long status, const char *err, void *ud)
{
    informer *inf = ud;
    inf->watch = NULL;
    if (inf->closing)
        return;
    if (status == 410)
        inf->relist = 1;
    int failed = err != NULL || (status != 200 && status != 410);
    if (failed) {
        log_warn("watch ended; re-watching", "resource", inf->resource_path, "error",
                 err ? err : "unexpected status", NULL);
        set_error(inf->owner, err ? err : "watch failed");
    }
    schedule(inf, rewatch_timer, failed);
}

static void informer_watch(informer *inf)
{
    if (inf->closing)
        return;
    buf path = {0};
    buf_printf(&path, "%s&watch=1&allowWatchBookmarks=true&timeoutSeconds=%d", inf->base,
               WATCH_TIMEOUT_S);
    if (inf->resource_version) {
        char *e = kube_escape(inf->resource_version);
        buf_printf(&path, "&resourceVersion=%s", e);
        free(e);
    }
    inf->watch = kube_watch_start(inf->owner->async, path.data, on_watch_event, on_watch_end, inf);
    buf_free(&path);
}

static char *base_path(const char *ns, enum cache_kind kind)
{
    char *sel = kube_escape(MANAGED_BY_LABEL "=" MANAGED_BY_VALUE);
    char *p = kind == CACHE_DEPLOYMENT
                  ? xasprintf("/apis/apps/v1/namespaces/%s/deployments?labelSelector=%s", ns, sel)
                  : xasprintf("/api/v1/namespaces/%s/pods?labelSelector=%s", ns, sel);
    free(sel);
    return p;
}

static void informer_init(cache *c, uv_loop_t *loop, informer *inf, enum cache_kind kind)
{
    inf->owner = c;
    inf->kind = kind;
    inf->items.borrowed_keys = 1; /* the key is the item's own name */
    inf->base = base_path(c->ns, kind);
    inf->resource_path = kind == CACHE_DEPLOYMENT ? "deployments" : "pods";
    inf->retry = xcalloc(1, sizeof *inf->retry);
    uv_timer_init(loop, inf->retry);
    inf->retry->data = inf;
}

cache *cache_start(uv_loop_t *loop, kube_async *a, const char *ns, cache_change_cb cb, void *ud)
{
    cache *c = xcalloc(1, sizeof *c);
    c->async = a;
    c->ns = xstrdup(ns);
    c->cb = cb;
    c->ud = ud;
    informer_init(c, loop, &c->deploy, CACHE_DEPLOYMENT);
    informer_init(c, loop, &c->pods, CACHE_POD);
    informer_list(&c->deploy, NULL);
    informer_list(&c->pods, NULL);
    return c;
}

static void free_timer(uv_handle_t *h)
{
    free(h);
}

static void informer_close(informer *inf)
{
    inf->closing = 1;
    if (inf->watch)
        kube_watch_stop(inf->watch);
    inf->watch = NULL;
    uv_timer_stop(inf->retry);
    uv_close((uv_handle_t *)inf->retry, free_timer);
    free(inf->base);
    free(inf->resource_version);
    if (inf->kind == CACHE_DEPLOYMENT)
        cache_free_deployments(&inf->items);
    else
        cache_free_pods(&inf->items);
}

void cache_free(cache *c)
{
    if (c == NULL)
        return;
    /* An in-flight LIST still points at its informer: the caller frees the
     * kube_async (which cancels it without callbacks) before or right after. */
    c->cb = NULL;
    informer_close(&c->deploy);
    informer_close(&c->pods);
    free(c->ns);
    free(c->last_error);
    free(c);
}

int cache_synced(const cache *c)
{
    return c->deploy.synced;
}

strmap *cache_deployments(cache *c)
{
    return &c->deploy.items;
}

strmap *cache_pods(cache *c)
{
    return &c->pods.items;
}

const char *cache_last_error(const cache *c)
{
    return c->last_error;
}

int cache_watching(const cache *c)
{
    return c->deploy.watch != NULL && c->pods.watch != NULL;
}

int cache_list_blocking(kube_client *k, const char *ns, enum cache_kind kind, int timeout_ms,
                        strmap *m, char *err, size_t errlen)
{
    char *base = base_path(ns, kind);
    char *cont = NULL;
    int rc = -1;
    for (;;) {
        buf path = {0};
        buf_printf(&path, "%s&limit=%d", base, PAGE_LIMIT);
        if (cont) {
            char *e = kube_escape(cont);
            buf_printf(&path, "&continue=%s", e);
            free(e);
        }
        kube_response resp;
        int r = kube_request(k, "GET", path.data, NULL, NULL, 0, timeout_ms, &resp, err, errlen);
        buf_free(&path);
        if (r < 0)
            goto out;
        if (resp.status != 200) {
            kube_response_error(&resp, err, errlen);
            kube_response_free(&resp);
            goto out;
        }
        json_value *doc = json_parse(resp.body, resp.len, err, errlen);
        kube_response_free(&resp);
        if (doc == NULL)
            goto out;
        const json_value *items = json_get(doc, "items");
        for (size_t i = 0; i < json_len(items); i++) {
            const json_value *obj = json_at(items, i);
            if (kind == CACHE_DEPLOYMENT) {
                obs_deploy *d = cache_parse_deployment(obj);
                if (d) {
                    d->applied_generation = d->generation;
                    obs_deploy_free(strmap_put(m, d->name, d));
                }
            } else {
                obs_pod *p = cache_parse_pod(obj);
                if (p)
                    obs_pod_free(strmap_put(m, p->name, p));
            }
        }
        free(cont);
        cont = dup_or_null(json_string(json_path(doc, "metadata", "continue", NULL)));
        json_free(doc);
        if (cont == NULL || *cont == '\0')
            break;
    }
    rc = 0;
out:
    free(cont);
    free(base);
    return rc;
}
