/* writer: see writer.h. */
#include "writer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "ownership.h"
#include "util.h"

#define DEPLOYMENTS "/apis/apps/v1/namespaces/%s/deployments"

struct writer {
    kube_async *ka; /* borrowed */
    const config *cfg;
    int (*may_write)(void *ud);
    writer_done_fn done;
    void *ud;
    strmap inflight; /* Deployment name → struct write_req */
};

/* What a request in flight is for. A create whose outcome is uncertain (its
 * POST timed out, or got 409) is followed by a GET (VERIFY). A Deployment
 * whose fields our POST still owns gets them moved to our apply
 * (ownership.h) before its first update: a JSON patch (OWN_PATCH; a GET
 * first, OWN_GET, unless the informer's copy is enough: own_rename_patch),
 * then the update's apply itself in the same request chain
 * (planning it again would wait a pass and the patch's watch echo). Not right
 * after the create: that would double the requests of a mass creation
 * (KUBE_QPS bounds them), and until the first update nothing the rules
 * render has been dropped from the object anyway. */
enum write_stage { STAGE_WRITE, STAGE_VERIFY, STAGE_OWN_GET, STAGE_OWN_PATCH };

typedef struct write_req {
    writer *wr;
    act_kind kind;
    enum write_stage stage;
    int attempts; /* ownership: patches tried */
    int moved;    /* ownership: the fields were moved (reported with the update) */
    char *account_id, *name, *reason;
    char *apply_body; /* an update behind the ownership step: its apply, sent next */
    char *failure; /* VERIFY: what happened to the create, reported if it did not happen */
} write_req;

static write_req *write_req_new(writer *wr, const action *a)
{
    write_req *w = xcalloc(1, sizeof *w);
    w->wr = wr;
    w->kind = a->kind;
    w->account_id = a->account_id ? xstrdup(a->account_id) : NULL;
    w->name = xstrdup(a->name);
    w->reason = xstrdup(a->reason);
    return w;
}

static void write_req_free(write_req *w)
{
    free(w->account_id);
    free(w->name);
    free(w->reason);
    free(w->failure);
    free(w->apply_body);
    free(w);
}

static void on_write_done(const kube_response *resp, const char *terr, void *ud);

/* Sends w's next request (w stays in flight under its name). Returns 0, or
 * -1 when nothing was sent (leadership lost, the client closing). */
static int send_request(write_req *w, const char *method, const char *path, const char *ctype, const char *body)
{
    writer *wr = w->wr;
    if (!wr->may_write(wr->ud))
        return -1;
    int rc = kube_async_request(wr->ka, method, path, ctype, body, body ? strlen(body) : 0, wr->cfg->kube_timeout_ms,
                                on_write_done, w);
    if (rc == 0)
        strmap_put(&wr->inflight, w->name, w);
    return rc;
}

/* A follow-up request on the object itself (GET, or a JSON patch by our field manager). */
static int send_stage(write_req *w, const char *method, const char *ctype, const char *body)
{
    char *path = xasprintf(DEPLOYMENTS "/%s%s", w->wr->cfg->namespace, w->name,
                           strcmp(method, "GET") == 0 ? "" : "?fieldManager=" OWN_FIELD_MANAGER);
    int rc = send_request(w, method, path, ctype, body);
    free(path);
    return rc;
}

/* The server-side apply of an update, forced: the operator's apply owns
 * every field the rules render. */
static char *apply_path(const writer *wr, const char *name)
{
    return xasprintf(DEPLOYMENTS "/%s?fieldManager=" OWN_FIELD_MANAGER "&force=true", wr->cfg->namespace, name);
}

/* After the ownership step: the update's apply. Returns 1 if it went out. */
static int send_apply(write_req *w)
{
    if (w->apply_body == NULL)
        return 0;
    char *path = apply_path(w->wr, w->name);
    w->stage = STAGE_WRITE;
    int sent = send_request(w, "PATCH", path, "application/apply-patch+yaml", w->apply_body) == 0;
    free(path);
    return sent;
}

static int own_patch(write_req *w, char *patch)
{
    if (patch == NULL)
        return 0;
    w->stage = STAGE_OWN_PATCH;
    w->attempts++;
    int sent = send_stage(w, "PATCH", "application/json-patch+json", patch) == 0;
    free(patch);
    return sent;
}

/* Moves the fields our POST owns to our apply, from obj when it is a fresh
 * copy (a create's response), else after a GET. Returns 1 if a request went
 * out for it. */
static int own_upgrade(write_req *w, const json_value *obj)
{
    if (obj == NULL) {
        w->stage = STAGE_OWN_GET;
        return send_stage(w, "GET", NULL, NULL) == 0;
    }
    return own_patch(w, own_upgrade_patch(obj));
}

/* 1 if the object carries what only our applies put there: the managed-by
 * label and the applied-hash annotation. */
static int ours(const json_value *obj)
{
    const json_value *meta = json_get(obj, "metadata");
    const char *mb = json_string(json_path(meta, "labels", MANAGED_BY_LABEL, NULL));
    return mb && strcmp(mb, MANAGED_BY_VALUE) == 0 &&
           json_string(json_path(meta, "annotations", APPLIED_HASH_ANNOTATION, NULL)) != NULL;
}

/* Hands one outcome of w to the owner. obj: the object the answer carried. */
static void outcome(write_req *w, write_result result, const char *reason, const json_value *obj)
{
    write_outcome o = {.result = result, .kind = w->kind, .account_id = w->account_id, .name = w->name,
                       .reason = reason ? reason : w->reason};
    if (obj) {
        o.uid = json_string(json_path(obj, "metadata", "uid", NULL));
        o.resource_version = cache_resource_version(obj);
        if (w->stage == STAGE_WRITE && (result == WRITE_CREATED || result == WRITE_UPDATED))
            o.applied_generation = (long)json_number(json_path(obj, "metadata", "generation", NULL), 0);
    }
    o.backoff = result == WRITE_FAILED || result == WRITE_UNMANAGED_CONFLICT;
    o.ownership_moved = w->moved;
    w->wr->done(&o, w->wr->ud);
}

/* The ownership step's answer. Returns 1 when w went on with another request. */
static int own_step(write_req *w, const kube_response *resp, int ok, const char *err)
{
    json_value *obj = ok ? json_parse(resp->body, resp->len, NULL, 0) : NULL;
    int again = 0;
    write_outcome o = {.kind = w->kind, .account_id = w->account_id, .name = w->name, .replan = 1};
    if (obj && w->stage == STAGE_OWN_GET) {
        again = own_upgrade(w, obj) || send_apply(w); /* (nothing left to move: the apply) */
        o.result = WRITE_OWNERSHIP_MOVED; /* (not again: nothing left to move, resource_version 0) */
    } else if (obj) {
        w->moved = 1;
        again = send_apply(w); /* not sent (leadership lost): reported, planned again */
        o.result = WRITE_OWNERSHIP_MOVED;
        o.resource_version = cache_resource_version(obj);
    } else if (resp && (resp->status == 409 || resp->status == 422) && w->attempts < 3) {
        again = own_upgrade(w, NULL); /* changed meanwhile: a fresh copy */
        o.result = WRITE_RETRY_LATER;
        o.reason = "leadership lost";
    } else if (resp && resp->status == 404) {
        o.result = WRITE_GONE;
    } else {
        o.result = WRITE_RETRY_LATER;
        o.reason = err;
        o.backoff = 1;
    }
    if (!again) /* the update it waited for, or whatever happened to it meanwhile */
        w->wr->done(&o, w->wr->ud);
    json_free(obj);
    return again;
}

/* The next step of w after resp/terr. Returns 1 when w went on with another
 * request (still in flight), 0 when it is finished. */
static int write_step(write_req *w, const kube_response *resp, const char *terr)
{
    const char *what = rec_action_name(w->kind);
    if (resp == NULL && terr && strncmp(terr, "not the leader", 14) == 0) {
        /* The write gate refused it (leadership lost before it was sent):
         * nothing happened; the next leader plans it again. */
        outcome(w, WRITE_RETRY_LATER, "leadership lost", NULL);
        return 0;
    }
    int ok = resp && resp->status >= 200 && resp->status < 300;
    char err[512];
    if (resp)
        kube_response_error(resp, err, sizeof err);
    else
        snprintf(err, sizeof err, "%s", terr ? terr : "request failed");

    if (w->stage == STAGE_OWN_GET || w->stage == STAGE_OWN_PATCH)
        return own_step(w, resp, ok, err);

    if (w->stage == STAGE_VERIFY) {
        json_value *obj = ok ? json_parse(resp->body, resp->len, NULL, 0) : NULL;
        const char *owner = json_string(json_path(obj, "metadata", "annotations", ACCOUNT_ANNOTATION, NULL));
        if (obj && ours(obj) && owner && w->account_id && strcmp(owner, w->account_id) == 0) {
            outcome(w, WRITE_ALREADY_OURS, NULL, obj); /* an earlier attempt did create it */
        } else if (obj && ours(obj)) {
            /* Ours, but another account's worker (an id that spells another's
             * hashed name; the partial pass did not show it): not this create. */
            char *reason = xasprintf("refusing to create %s: it belongs to another account (name collision)",
                                     w->name);
            outcome(w, WRITE_UNMANAGED_CONFLICT, reason, obj);
            free(reason);
        } else if (obj) {
            char *reason = xasprintf("cannot create %s: a Deployment of that name exists and is not managed "
                                     "by sync-airbnb-operator; leaving it alone (%s)", w->name, w->failure);
            outcome(w, WRITE_UNMANAGED_CONFLICT, reason, obj);
            free(reason);
        } else {
            outcome(w, WRITE_FAILED, w->failure, NULL); /* 404: it did not happen; or we cannot tell */
        }
        json_free(obj);
        return 0;
    }

    if (ok) {
        json_value *obj = json_parse(resp->body, resp->len, NULL, 0);
        outcome(w, w->kind == ACT_DELETE ? WRITE_DELETED : w->kind == ACT_CREATE ? WRITE_CREATED : WRITE_UPDATED,
                NULL, w->kind == ACT_DELETE ? NULL : obj);
        json_free(obj);
        return 0;
    }
    if (resp && w->kind == ACT_DELETE && resp->status == 404) {
        outcome(w, WRITE_GONE, NULL, NULL);
        return 0;
    }
    if (w->kind == ACT_CREATE && (resp == NULL || resp->status == 409)) {
        /* A timed-out POST may have been applied, and a 409 may be its own
         * earlier attempt: look before reporting. */
        w->failure = xasprintf("create %s failed: %s", w->name, err);
        w->stage = STAGE_VERIFY;
        if (send_stage(w, "GET", NULL, NULL) == 0)
            return 1;
        outcome(w, WRITE_FAILED, w->failure, NULL);
        return 0;
    }
    char *reason = xasprintf("%s %s failed: %s", what, w->name, err);
    outcome(w, WRITE_FAILED, reason, NULL);
    free(reason);
    return 0;
}

static void on_write_done(const kube_response *resp, const char *terr, void *ud)
{
    write_req *w = ud;
    strmap_del(&w->wr->inflight, w->name);
    if (write_step(w, resp, terr))
        return; /* w went on with its next request */
    write_req_free(w);
}

writer *writer_new(kube_async *ka, const config *cfg, int (*may_write)(void *ud), writer_done_fn done, void *ud)
{
    writer *w = xcalloc(1, sizeof *w);
    w->ka = ka;
    w->cfg = cfg;
    w->may_write = may_write;
    w->done = done;
    w->ud = ud;
    return w;
}

int writer_send(writer *wr, const action *a, const obs_deploy *live)
{
    if (!wr->may_write(wr->ud))
        return 0;
    write_req *w = write_req_new(wr, a);
    if (live && live->update_owned) {
        /* Our POST still owns fields: move them to our apply first, so that
         * this apply removes what the rules no longer render; the account
         * is planned again once that is done. */
        if (a->kind == ACT_UPDATE && a->body)
            w->apply_body = xstrdup(a->body);
        /* The usual case, a worker our POST made and nothing of ours has
         * applied since: a rename guarded by the informer's resourceVersion,
         * no GET (a mass roll right after a mass creation is three requests
         * per worker otherwise). Refused when the copy is stale: the GET then. */
        if (live->own_rename_at >= 0 && live->resource_version > 0 &&
            own_patch(w, own_rename_patch(live->own_rename_at, live->resource_version)))
            return 1;
        if (own_upgrade(w, NULL))
            return 1;
        write_req_free(w);
        return 0;
    }
    const config *cfg = wr->cfg;
    char *path = NULL, *delete_body = NULL;
    const char *method, *ctype = NULL, *body = NULL;
    switch (a->kind) {
    case ACT_CREATE: /* a POST: fails on a name that exists (writer.h) */
        method = "POST";
        path = xasprintf(DEPLOYMENTS "?fieldManager=" OWN_FIELD_MANAGER, cfg->namespace);
        body = a->body;
        break;
    case ACT_UPDATE:
        method = "PATCH";
        path = apply_path(wr, a->name);
        ctype = "application/apply-patch+yaml"; /* JSON is YAML */
        body = a->body;
        break;
    default: { /* ACT_DELETE: with the uid as precondition, never a replacement */
        buf b = {0};
        json_out o;
        jo_init(&o, &b);
        jo_object(&o);
        jo_kstr(&o, "apiVersion", "v1");
        jo_kstr(&o, "kind", "DeleteOptions");
        jo_kstr(&o, "propagationPolicy", "Background");
        if (a->uid) {
            jo_key(&o, "preconditions");
            jo_object(&o);
            jo_kstr(&o, "uid", a->uid);
            jo_end(&o);
        }
        jo_end(&o);
        method = "DELETE";
        path = xasprintf(DEPLOYMENTS "/%s", cfg->namespace, a->name);
        body = delete_body = buf_steal(&b);
        break;
    }
    }
    strmap_put(&wr->inflight, w->name, w);
    kube_async_request(wr->ka, method, path, ctype, body, body ? strlen(body) : 0, cfg->kube_timeout_ms,
                       on_write_done, w);
    free(path);
    free(delete_body);
    return 1;
}

int writer_busy(const writer *w, const char *name)
{
    return name && strmap_get(&w->inflight, name) != NULL;
}

size_t writer_inflight(const writer *w)
{
    return w->inflight.len;
}

void writer_accounts(const writer *w, strmap *ids)
{
    size_t it = 0;
    void *v;
    while (strmap_next(&w->inflight, &it, NULL, &v))
        if (((write_req *)v)->account_id)
            strmap_put(ids, ((write_req *)v)->account_id, (void *)1);
}

void writer_free(writer *w)
{
    if (w == NULL)
        return;
    size_t it = 0;
    void *v;
    while (strmap_next(&w->inflight, &it, NULL, &v))
        write_req_free(v);
    strmap_free(&w->inflight);
    free(w);
}
