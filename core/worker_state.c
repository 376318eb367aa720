/* worker_state: see worker_state.h. */
#include "worker_state.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

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
