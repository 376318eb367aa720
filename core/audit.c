/* audit: the audit trail of every action (DESIGN.md §5.6): a row in
 * sync_airbnb_operator.audit_log and a core/v1 Event. Neither ever carries a
 * credential value: callers pass reasons the reconcile step scrubbed. */
#include "audit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

int audit_write(pg_conn *db, const char *actor, const char *what, const char *account_id,
                const char *deployment, const char *reason)
{
    static const char sql[] =
        "INSERT INTO sync_airbnb_operator.audit_log (action, account_id, deployment, reason, actor) "
        "VALUES ($1, $2, $3, $4, $5)";
    const char *params[] = {what, account_id, deployment, reason, actor};
    char err[512];
    if (db == NULL || pg_command(db, sql, 5, params, err, sizeof err) < 0) {
        metrics_add("sync_airbnb_operator_audit_failures_total", NULL, 1);
        log_warn("audit_log write failed", "action", what, "account_id", account_id ? account_id : "",
                 "error", db ? err : "no database connection", NULL);
        return -1;
    }
    return 0;
}

void event_post_logged(const kube_response *resp, const char *terr, void *ud)
{
    (void)ud;
    if (resp == NULL || resp->status >= 300) {
        char err[256];
        if (resp)
            kube_response_error(resp, err, sizeof err);
        log_debug("event not posted", "error", resp ? err : terr, NULL);
    }
}

void event_post(kube_async *ka, const char *ns, const char *identity, int timeout_ms,
                const char *api_version, const char *kind, const char *name, const char *uid,
                const char *reason, const char *message, int warning, kube_done_cb done, void *ud)
{
    if (name == NULL)
        return;
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    buf b = {0};
    buf_puts(&b, "{\"apiVersion\":\"v1\",\"kind\":\"Event\",\"metadata\":{\"generateName\":");
    char *gen = xasprintf("%s.", name);
    buf_json_string(&b, gen, strlen(gen));
    free(gen);
    buf_puts(&b, ",\"namespace\":");
    buf_json_string(&b, ns, strlen(ns));
    buf_printf(&b, "},\"involvedObject\":{\"apiVersion\":\"%s\",\"kind\":\"%s\",\"name\":", api_version, kind);
    buf_json_string(&b, name, strlen(name));
    buf_puts(&b, ",\"namespace\":");
    buf_json_string(&b, ns, strlen(ns));
    if (uid) {
        buf_puts(&b, ",\"uid\":");
        buf_json_string(&b, uid, strlen(uid));
    }
    buf_puts(&b, "},\"reason\":");
    buf_json_string(&b, reason, strlen(reason));
    buf_puts(&b, ",\"message\":");
    buf_json_string(&b, message, strlen(message));
    buf_printf(&b, ",\"type\":\"%s\",\"source\":{\"component\":\"sync-airbnb-operator\"},"
                   "\"reportingComponent\":\"sync-airbnb-operator\",\"reportingInstance\":",
               warning ? "Warning" : "Normal");
    buf_json_string(&b, identity, strlen(identity));
    buf_printf(&b, ",\"firstTimestamp\":\"%s\",\"lastTimestamp\":\"%s\",\"count\":1}", ts, ts);
    char *path = xasprintf("/api/v1/namespaces/%s/events", ns);
    if (done == NULL)
        done = event_post_logged;
    kube_async_request(ka, "POST", path, NULL, b.data, b.len, timeout_ms, done, ud);
    free(path);
    buf_free(&b);
}
