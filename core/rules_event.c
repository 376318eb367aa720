/* rules_event: see rules_event.h. */
#include "rules_event.h"

#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "json.h"
#include "util.h"

struct pending {
    struct pending *prev, *next; /* in flight: freed by rules_event_free_pending if never answered */
    kube_async *ka;
    char *ns, *name, *identity, *reason, *message;
    int timeout_ms, warning;
};

static struct pending *in_flight;

static void pending_free(struct pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else if (in_flight == p)
        in_flight = p->next;
    if (p->next)
        p->next->prev = p->prev;
    free(p->ns);
    free(p->name);
    free(p->identity);
    free(p->reason);
    free(p->message);
    free(p);
}

static void on_configmap(const kube_response *resp, const char *transport_err, void *ud)
{
    struct pending *p = ud;
    json_value *doc = NULL;
    const char *uid = NULL;
    if (resp && resp->status == 200) {
        doc = json_parse(resp->body, resp->len, NULL, 0);
        uid = json_string(json_path(doc, "metadata", "uid", NULL));
    }
    /* Without the uid (no such ConfigMap, no RBAC) the Event still lists
     * with kubectl get events; describe needs the uid. */
    event_post(p->ka, p->ns, p->identity, p->timeout_ms, "v1", "ConfigMap", p->name, uid, p->reason, p->message,
               NULL, p->warning, 0, NULL, NULL);
    json_free(doc);
    pending_free(p);
}

int rules_event_post(kube_async *ka, const config *cfg, const char *reason, const char *message, int warning)
{
    if (cfg->rules_configmap == NULL)
        return -1;
    const char *slash = strchr(cfg->rules_configmap, '/');
    struct pending *p = xcalloc(1, sizeof *p);
    p->ka = ka;
    p->ns = xstrndup(cfg->rules_configmap, (size_t)(slash - cfg->rules_configmap));
    p->name = xstrdup(slash + 1);
    p->identity = xstrdup(cfg->identity);
    p->reason = xstrdup(reason);
    p->message = xstrdup(message);
    p->timeout_ms = cfg->kube_timeout_ms;
    p->warning = warning;
    char *path = xasprintf("/api/v1/namespaces/%s/configmaps/%s", p->ns, p->name);
    p->next = in_flight;
    if (in_flight)
        in_flight->prev = p;
    in_flight = p;
    if (kube_async_request(ka, "GET", path, NULL, NULL, 0, cfg->kube_timeout_ms, on_configmap, p) < 0)
        pending_free(p);
    free(path);
    return 0;
}

void rules_event_free_pending(void)
{
    while (in_flight)
        pending_free(in_flight);
}
