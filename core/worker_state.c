/* worker_state: see worker_state.h. */
#include "worker_state.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kube.h"
#include "log.h"
#include "util.h"

const char *wstate_annotation(const obs_deploy *d, const char *key)
{
    for (int i = 0; d && i < d->nann; i++)
        if (strcmp(d->ann_keys[i], key) == 0)
            return d->ann_values[i];
    return NULL;
}

int wstate_paused(const obs_deploy *d)
{
    const char *v = wstate_annotation(d, PAUSED_ANNOTATION);
    return v && strcmp(v, "true") == 0;
}

void wstate_now_rfc3339(char out[21])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

size_t wstate_count_paused(const strmap *deployments)
{
    size_t n = 0, it = 0;
    void *v;
    while (strmap_next(deployments, &it, NULL, &v)) {
        const obs_deploy *d = v;
        n += d->managed && wstate_paused(d);
    }
    return n;
}

char *wstate_paused_reason(int is_delete, const char *name)
{
    if (is_delete)
        return xasprintf("paused (" PAUSED_ANNOTATION "=true): the account is not active, but the worker is "
                         "kept; kubectl annotate deployment %s " PAUSED_ANNOTATION "- lets it be deleted",
                         name);
    return xasprintf("paused (" PAUSED_ANNOTATION "=true): a change is pending and not applied; "
                     "kubectl annotate deployment %s " PAUSED_ANNOTATION "- resumes it",
                     name);
}

static void on_state_patched(const kube_response *resp, const char *transport_err, void *ud)
{
    char *name = ud, what[256];
    if (resp == NULL || resp->status >= 300)
        log_warn("could not mark the worker's state", "deployment", name, "error",
                 resp ? kube_response_error(resp, what, sizeof what) : transport_err, NULL);
    free(name);
}

void wstate_report(struct kube_async *ka, const char *ns, const obs_deploy *d, const char *what,
                   const char *reason)
{
    if (ka == NULL || d == NULL || !d->managed || wstate_paused(d))
        return;
    const char *state = strcmp(what, "hold") == 0 ? "held" : strcmp(what, "error") == 0 ? "failing" : NULL;
    const char *marked = wstate_annotation(d, STATE_ANNOTATION);
    int clear = state == NULL && marked && (strcmp(what, "create") == 0 || strcmp(what, "update") == 0);
    if (state == NULL && !clear)
        return;
    const char *old_reason = wstate_annotation(d, STATE_REASON_ANNOTATION);
    if (state && marked && strcmp(marked, state) == 0 && old_reason && reason && strcmp(old_reason, reason) == 0)
        return; /* already says so (a restarted operator reports again) */
    buf b = {0};
    if (clear) {
        buf_puts(&b, "{\"metadata\":{\"annotations\":{\"" STATE_ANNOTATION "\":null,\"" STATE_REASON_ANNOTATION
                     "\":null,\"" STATE_AT_ANNOTATION "\":null}}}");
    } else {
        char at[21];
        wstate_now_rfc3339(at);
        buf_puts(&b, "{\"metadata\":{\"annotations\":{\"" STATE_ANNOTATION "\":");
        buf_json_string(&b, state, strlen(state));
        buf_puts(&b, ",\"" STATE_REASON_ANNOTATION "\":");
        buf_json_string(&b, reason ? reason : "", reason ? strlen(reason) : 0);
        buf_printf(&b, ",\"" STATE_AT_ANNOTATION "\":\"%s\"}}}", at);
    }
    /* The uid as a precondition: the mark goes on this object, never on
     * one created since under the same name (the API server refuses a
     * patch that would change the uid). */
    char *body = d->uid ? xasprintf("%.*s,\"uid\":\"%s\"}}", (int)(b.len - 2), b.data, d->uid) : xstrdup(b.data);
    char *path = xasprintf("/apis/apps/v1/namespaces/%s/deployments/%s", ns, d->name);
    if (kube_async_request(ka, "PATCH", path, "application/merge-patch+json", body, strlen(body), 0,
                           on_state_patched, xstrdup(d->name)) < 0)
        log_warn("could not mark the worker's state", "deployment", d->name, "error", "client closing", NULL);
    free(path);
    free(body);
    buf_free(&b);
}
